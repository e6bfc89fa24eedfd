"""Publishes ride through a JetStream leader election: the stream leader SIGKILLed under load.

A gateway on node 1 (never the stream's leader), a client publishing into a
history channel without pause, and the leader killed. While the stream elects
another leader (several seconds), the gateway retries each publish with its
``Nats-Msg-Id`` (stored once) instead of refusing it: no publication is
refused and each acknowledged one is stored exactly once.

The test prints its figures (``-s``).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as Nats

from meshcast.bus import Subjects, connect
from meshcast.devtools.tokens import connection_token
from meshcast.testing import (
    NatsCluster,
    ServiceProcess,
    gateway_process,
    history_process,
    running,
    timeout,
    within,
    ws_url,
)
from meshcast.testing.raw import RawClient

from .conftest import NAMESPACES, SECRET

pytestmark = pytest.mark.e2e

CHANNEL = "stream:election"
STREAM = Subjects().stream_name("stream")


@pytest.fixture
def gateway_on_node1(nats_cluster: NatsCluster, tmp_path: Path) -> Iterator[ServiceProcess]:
    urls = nats_cluster.urls
    env = {"MESHCAST_HISTORY_REPLICAS": "3", "MESHCAST_NATS_RANDOMIZE": "false"}
    history = history_process(tmp_path, urls, namespaces_file=NAMESPACES, extra_env=env)
    gateway = gateway_process(
        tmp_path, urls, secret=SECRET, namespaces_file=NAMESPACES, extra_env={"MESHCAST_NATS_RANDOMIZE": "false"}
    )
    with running(history, gateway):
        try:
            yield gateway
        finally:  # a paused node answers again, so the services stop in time
            for node in nats_cluster.nodes:
                if node.process is not None and node.process.poll() is None:
                    os.kill(node.process.pid, signal.SIGCONT)


async def leader_off_node1(admin: Nats) -> str:
    """The stream's leader, stepped down until it is not node 1 (where the gateway is)."""
    js = admin.jetstream(timeout=timeout(5))
    for _ in range(50):
        info = await js.stream_info(STREAM)
        leader = info.cluster.leader if info.cluster else None
        if leader and leader != "n1":
            return leader
        if leader == "n1":
            await admin.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{STREAM}", b"", timeout=timeout(5))
        await asyncio.sleep(0.2)
    raise AssertionError("the stream never had a leader off node 1")


async def test_publishes_ride_through_a_killed_stream_leader(
    nats_cluster: NatsCluster, gateway_on_node1: ServiceProcess
) -> None:
    client = await RawClient.open(ws_url(gateway_on_node1))
    assert "connect" in await client.command("connect", {"token": connection_token(SECRET, "alice")})
    admin = await connect(nats_cluster.urls[0], name="admin", randomize=False)
    acked: list[int] = []
    refused: list[dict[str, object]] = []
    slowest = 0.0

    async def publish_for(seconds: float) -> None:
        nonlocal slowest
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            n = len(acked) + len(refused)
            started = loop.time()
            reply = await client.command("publish", {"channel": CHANNEL, "data": {"n": n}}, seconds=30)
            slowest = max(slowest, loop.time() - started)
            if "error" in reply:
                refused.append(reply["error"])
            else:
                acked.append(n)
            await asyncio.sleep(0.02)

    try:
        await publish_for(1)
        leader = await within(leader_off_node1(admin), 20)
        [node] = [n for n in nats_cluster.nodes if n.name == leader]
        node.kill()
        await publish_for(12)
        reply = await client.command("history", {"channel": CHANNEL, "limit": -1}, seconds=30)
    finally:
        await admin.close()
        await client.close()
    stored = [int(p["data"]["n"]) for p in _pubs(reply)]
    print(
        f"\nleader {leader} killed: {len(acked)} publications acknowledged, {len(refused)} refused, "
        f"slowest ack {slowest:.2f} s, {len(stored)} stored"
    )
    assert refused == [], refused
    assert sorted(stored) == acked, "an acknowledged publication was lost or stored twice"


def _pubs(reply: dict[str, Any]) -> list[dict[str, Any]]:
    assert "history" in reply, reply
    pubs: list[dict[str, Any]] = reply["history"].get("publications", [])
    return pubs
