"""The unmodified centrifuge-go SDK (v0.12.1) against two gateways, history and presence,
in JSON and in protobuf: ``tests/e2e/sdk/go/main.go``, one JSON line per step.

Client A is on gateway A, B on gateway B: each sees the other's publications; A reads
history, presence and presence stats; C gets a server-side subscription from its
token's ``subs``; A recovers what B published while gateway A restarted; R connects
with a short-lived token from a ``GetToken`` callback and stays connected through
its refreshes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meshcast.testing import ServiceProcess, ws_url

from . import sdk_programs
from .conftest import SECRET
from .sdk_programs import ScenarioRun, assert_scenario, run_scenario

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def go_program() -> Path:
    return sdk_programs.program("go")


def assert_positions(run: ScenarioRun) -> None:
    """centrifuge-go shows the stream position (centrifuge-java keeps it package-private)."""
    subscribed = run.step("subscribe")
    assert subscribed.get("epoch"), f"a history channel has an epoch: {subscribed}"
    history = run.step("history")
    assert history["epoch"] == history["subscribed_epoch"], f"history's epoch is the subscription's: {history}"


@pytest.mark.parametrize("fmt", ["json", "protobuf"])
def test_centrifuge_go_across_gateways_with_history_presence_recovery_and_refresh(
    go_program: Path, two_gateways: tuple[ServiceProcess, ServiceProcess], fmt: str
) -> None:
    gateway_a, gateway_b = two_gateways
    argv = [str(go_program), "-format", fmt, "-a", ws_url(gateway_a), "-b", ws_url(gateway_b)]
    run = run_scenario(argv, gateway_a, env={"MESHCAST_SDK_SECRET": SECRET}, seconds=60)
    assert_scenario(run, "go", f"chat:go-server-{fmt}")
    assert_positions(run)
