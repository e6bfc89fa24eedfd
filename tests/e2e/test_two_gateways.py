"""Two gateway processes on a 3-node NATS cluster, with the unmodified centrifuge-python SDK."""

from __future__ import annotations

import asyncio
import json

import nats
import pytest
from centrifuge import Client, OperationTimeoutError, PublicationContext, ReplyError, SubscribedContext

from meshcast.bus import connect, publish
from meshcast.testing import (
    NatsCluster,
    NatsServer,
    ServiceProcess,
    timeout,
    wait_until,
    wait_until_async,
    within,
    ws_url,
)
from meshcast.testing.balancer import TcpBalancer

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


class Subscriber(Recorder):
    """One SDK subscription: every publication's n, and how each subscribe ended."""

    def __init__(self) -> None:
        super().__init__()
        self.values: list[int] = []
        self.subscribed: list[SubscribedContext] = []

    async def on_publication(self, ctx: PublicationContext) -> None:
        if isinstance(ctx.pub.data, dict) and "n" in ctx.pub.data:
            self.values.append(ctx.pub.data["n"])
        await super().on_publication(ctx)

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        self.subscribed.append(ctx)


async def subscriber_got(subscriber: Subscriber, count: int) -> None:
    await wait_until_async(lambda: len(subscriber.values) >= count, 30, f"{count} publications")


async def test_sigterm_drains_clients_to_the_other_gateway_and_they_recover_every_publication_once(
    two_gateways: tuple[ServiceProcess, ServiceProcess], nats_cluster: NatsCluster
) -> None:
    """Gateway 1 gets SIGTERM while publications go on: it stops accepting, tells
    its clients to reconnect (3001) over the drain window and exits 0. Through the
    load balancer they land on gateway 2 and recover: each sees every publication
    exactly once, in order."""
    gw1, gw2 = two_gateways
    backends = [("127.0.0.1", int(gw.env["_PORT"])) for gw in (gw1, gw2)]
    balancer = await TcpBalancer(backends).start()  # gateway 1 first, while it accepts
    url = f"ws://127.0.0.1:{balancer.port}/connection/websocket"
    channel, total = "stream:drain", 300
    clients: list[tuple[Client, ConnectionEvents, Subscriber]] = []
    nc = await connect(nats_cluster.urls, name="backend")
    try:
        for i in range(4):
            events, subscriber = ConnectionEvents(), Subscriber()
            client = sdk_client(url, f"drained-{i}", events=events)
            await within(client.connect())
            sub = client.new_subscription(channel, events=subscriber)
            await sub.subscribe()
            await sub.ready(timeout=timeout(5))
            clients.append((client, events, subscriber))

        async def produce() -> None:
            for n in range(total):
                await publish(nc, channel, json.dumps({"n": n}).encode(), history=True, idempotency_key=f"drain-{n}")
                await asyncio.sleep(0.005)

        producer = asyncio.create_task(produce())
        for _, _, subscriber in clients:
            await subscriber_got(subscriber, 20)
        code = await asyncio.to_thread(gw1.terminate)
        assert code == 0, gw1.logs()[-3000:]
        await within(producer, 60)

        for _, events, subscriber in clients:
            await events.wait_for_code(3001, 10)
            await subscriber_got(subscriber, total)
            assert subscriber.values == list(range(total)), "every publication exactly once, in order"
            assert [(c.was_recovering, c.recovered) for c in subscriber.subscribed] == [(False, False), (True, True)]
        gw2_logs = gw2.logs()
        for i in range(len(clients)):
            assert f'"user": "drained-{i}"' in gw2_logs, "a drained client did not move to gateway 2"
    finally:
        for client, _, _ in clients:
            await client.disconnect()
        await nc.close()
        await balancer.stop()
