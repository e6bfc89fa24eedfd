"""The unmodified centrifuge-java SDK (0.4.1, the version Maven Central serves here)
against two gateways, history and presence: ``tests/e2e/sdk/java``, one JSON line per
step. centrifuge-java speaks protobuf only, so this is the protobuf scenario.

The same steps as centrifuge-go's (``test_sdk_go.py``): clients on both gateways see
each other's publications; history, presence and presence stats; a server-side
subscription from the token's ``subs``; recovery of what was published while gateway
A restarted; a short-lived token refreshed through a ``ConnectionTokenGetter``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from meshcast.testing import ServiceProcess, ws_url

from . import sdk_programs
from .conftest import SECRET
from .sdk_programs import assert_scenario, run_scenario

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def java_program() -> Path:
    return sdk_programs.program("java")


def test_centrifuge_java_across_gateways_with_history_presence_recovery_and_refresh(
    java_program: Path, two_gateways: tuple[ServiceProcess, ServiceProcess]
) -> None:
    gateway_a, gateway_b = two_gateways
    java = shutil.which("java")
    assert java is not None, "the jar was built, so java is installed"
    argv = [java, "-jar", str(java_program), ws_url(gateway_a), ws_url(gateway_b)]
    run = run_scenario(argv, gateway_a, env={"MESHCAST_SDK_SECRET": SECRET}, seconds=60)
    assert_scenario(run, "java", "chat:java-server")
    assert run.step("subscribe")["has_stream_position"] is True, run.step("subscribe")
