"""Pytest plugin (entry point ``meshcast``): real NATS for every test that asks.

Fixtures:
- ``nats_url``: a JetStream nats-server for this test: a container when a
  Docker engine answers, the local ``nats-server`` binary otherwise.
- ``nats_server``: a local nats-server process the test may stop or kill.
- ``nats_cluster``: three routed JetStream nodes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .containers import NatsContainer, docker_available
from .nats import NatsCluster, NatsServer


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    if docker_available():
        container = NatsContainer().start()
        try:
            yield container.url
        finally:
            container.stop()
        return
    server = NatsServer(tmp_path / "nats").start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    cluster = NatsCluster.start(tmp_path / "cluster")
    try:
        yield cluster
    finally:
        cluster.stop()
