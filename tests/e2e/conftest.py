"""Real processes: a 3-node NATS cluster and gateways started as subprocesses."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshcast.testing import (
    NatsCluster,
    ServiceProcess,
    gateway_process,
    history_process,
    jaeger,
    presence_process,
    running,
    timeout,
)

from . import sdk_programs

SECRET = "e2e-secret-0123456789abcdef0123456789"
ROOT = Path(__file__).resolve().parents[2]
NAMESPACES = Path(__file__).parent / "namespaces.yaml"


E2E_DIR = Path(__file__).parent


def pytest_collection_modifyitems(session: pytest.Session, items: list[pytest.Item]) -> None:
    """The third-party SDKs leave sockets of abandoned connection attempts to the
    garbage collector: not our leak, and not to be blamed on a later test.

    The Go and Java SDK programs (`sdk_programs`) and Jaeger (`meshcast.testing.jaeger`)
    are built now, outside any test's timeout, if a test of theirs is selected."""
    for item in items:
        if E2E_DIR in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"))
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for sdk in sorted({sdk_programs.MODULES.get(Path(str(item.path)).name, "") for item in items} - {""}):
        sdk_programs.prebuild(sdk, log=reporter.write_line if reporter is not None else None)
    if any(Path(str(item.path)).name == "test_tracing_jaeger.py" for item in items):
        jaeger.prebuild(log=reporter.write_line if reporter is not None else None)


@pytest.fixture(autouse=True)
def _collect_sdk_garbage() -> Iterator[None]:
    yield
    gc.collect()


@pytest.fixture
def two_gateways(nats_cluster: NatsCluster, tmp_path: Path) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    """Gateway 1 prefers node 1, gateway 2 prefers node 2 (no randomizing)."""
    urls = nats_cluster.urls
    procs = [
        gateway_process(
            tmp_path,
            [urls[i], *urls[:i], *urls[i + 1 :]],
            secret=SECRET,
            namespaces_file=NAMESPACES,
            name=f"gateway-{i + 1}",
            extra_env={"MESHCAST_NATS_RANDOMIZE": "false", "MESHCAST_PRESENCE_HEARTBEAT_INTERVAL": "0.5"},
        )
        for i in range(2)
    ]
    history = history_process(tmp_path, urls, namespaces_file=NAMESPACES, extra_env={"MESHCAST_HISTORY_REPLICAS": "3"})
    presence = presence_process(
        # A gateway silent for this long is dead: scaled, so a busy machine's late heartbeat is not.
        tmp_path,
        urls,
        extra_env={"MESHCAST_GATEWAY_TIMEOUT": f"{timeout(3):g}", "MESHCAST_LEASE_REPLICAS": "3"},
    )
    with running(history, presence, *procs):
        yield procs[0], procs[1]
