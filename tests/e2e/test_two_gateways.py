"""Two gateway processes on a 3-node NATS cluster, with the unmodified centrifuge-python SDK."""

from __future__ import annotations

import asyncio

import nats
import pytest
from centrifuge import OperationTimeoutError, ReplyError

from meshcast.testing import NatsCluster, NatsServer, ServiceProcess, timeout, wait_until, within, ws_url

from .sdk import ConnectionEvents, Recorder, decoded, payload, sdk_client, warm_up

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("protobuf", [False, True], ids=["json", "protobuf"])
async def test_publication_crosses_gateways(
    two_gateways: tuple[ServiceProcess, ServiceProcess], protobuf: bool
) -> None:
    gw1, gw2 = two_gateways
    alice = sdk_client(ws_url(gw1), "alice", protobuf=protobuf)
    bob = sdk_client(ws_url(gw2), "bob", protobuf=protobuf)
    recorder = Recorder()
    try:
        await within(alice.connect())
        await within(bob.connect())
        sub = bob.new_subscription("chat:e2e", events=recorder)
        await sub.subscribe()
        await sub.ready(timeout=5)
        await warm_up(alice, "chat:e2e", recorder, protobuf)
        for i in range(20):
            await alice.publish("chat:e2e", payload(protobuf, {"n": i}))
        got = [decoded(protobuf, await recorder.next()) for _ in range(20)]
        assert got == [{"n": i} for i in range(20)]
    finally:
        await alice.disconnect()
        await bob.disconnect()


async def _stream_leader(cluster: NatsCluster, stream: str) -> NatsServer:
    nc = await nats.connect(cluster.urls, allow_reconnect=False)
    try:
        info = await nc.jetstream(timeout=timeout(5)).stream_info(stream)
    finally:
        await nc.close()
    assert info.cluster is not None
    assert info.cluster.leader
    [leader] = [n for n in cluster.nodes if n.name == info.cluster.leader]
    return leader


@pytest.mark.parametrize("victim", ["publisher's node", "stream leader"])
async def test_every_acknowledged_publish_is_delivered_when_a_nats_node_dies(
    two_gateways: tuple[ServiceProcess, ServiceProcess], nats_cluster: NatsCluster, victim: str
) -> None:
    """A node dies mid-stream: gateway 1's own node (the publisher's), or the leader
    of the channel's history stream. Every publish acknowledged to the client is
    delivered to the subscriber on the other gateway, in order; only a publish whose
    answer was lost (a timeout, retried) may arrive twice."""
    gw1, gw2 = two_gateways
    alice = sdk_client(ws_url(gw1), "alice")
    bob = sdk_client(ws_url(gw2), "bob")
    recorder = Recorder()
    channel = "chat:failover"
    try:
        await within(alice.connect())
        await within(bob.connect())
        sub = bob.new_subscription(channel, events=recorder)
        await sub.subscribe()
        await sub.ready(timeout=timeout(5))
        await warm_up(alice, channel, recorder)
        node = (
            nats_cluster.nodes[0]
            if victim == "publisher's node"
            else await _stream_leader(nats_cluster, "MESHCAST_HISTORY_chat")
        )

        acked: list[int] = []
        unanswered: set[int] = set()  # a timeout: stored or not, the client cannot tell
        temporary_errors: list[bool] = []
        for n in range(40):
            if n == 10:
                node.kill()
            while True:
                try:
                    await alice.publish(channel, {"n": n}, timeout=timeout(3))
                except ReplyError as err:
                    # While JetStream fails over, a publish is refused with a temporary error.
                    temporary_errors.append(err.temporary)
                    await asyncio.sleep(0.1)
                    continue
                except OperationTimeoutError:
                    unanswered.add(n)
                    continue
                acked.append(n)
                break
        assert acked == list(range(40))
        assert all(temporary_errors), "a refused publish must be a temporary error"

        delivered: list[int] = []

        async def every_acknowledged_one() -> None:
            while not set(acked) <= set(delivered):
                delivered.append((await recorder.received.get())["n"])

        await within(every_acknowledged_one(), 30)
        assert delivered == sorted(delivered), "delivered out of order"
        twice = {n for n in delivered if delivered.count(n) > 1}
        assert twice <= unanswered, f"delivered twice though acknowledged once: {twice - unanswered}"
        if node is nats_cluster.nodes[0]:
            await asyncio.to_thread(wait_until, lambda: "nats reconnected" in gw1.logs(), 10, "gateway 1 failover")
    finally:
        await alice.disconnect()
        await bob.disconnect()


async def test_sigterm_drains_clients_with_a_reconnect_code(
    two_gateways: tuple[ServiceProcess, ServiceProcess],
) -> None:
    gw1, _ = two_gateways
    events = ConnectionEvents()
    client = sdk_client(ws_url(gw1), "carol", events=events)
    try:
        await within(client.connect())
        code = await asyncio.to_thread(gw1.terminate)
        assert code == 0
        await events.wait_for_code(3001)
    finally:
        await client.disconnect()
