"""No silent loss, end to end: unmodified SDK clients, real gateways, a 3-node NATS cluster."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from centrifuge import Client, StreamPosition, SubscribedContext
from nats.aio.client import Client as Nats

from meshcast.bus import Subjects, connect, publish
from meshcast.proto.history_pb2 import HistoryReply, HistoryRequest
from meshcast.testing import NatsCluster, ServiceProcess, timeout, within, ws_url
from meshcast.testing.balancer import TcpBalancer

from .sdk import Recorder, sdk_client

pytestmark = pytest.mark.e2e

DURABLE = "stream:durable"
DURABLE_STREAM = Subjects().stream_name("stream")


class Tracker(Recorder):
    """Records publications (and their offsets) and how each subscribe ended."""

    def __init__(self) -> None:
        super().__init__()
        self.values: list[Any] = []
        self.offsets: list[int] = []
        self.position: StreamPosition | None = None
        self.subscribed: list[SubscribedContext] = []
        self.changed = asyncio.Event()

    async def on_publication(self, ctx: Any) -> None:
        self.values.append(ctx.pub.data)
        self.offsets.append(ctx.pub.offset)
        self.changed.set()
        if self.position is not None:
            self.position = StreamPosition(offset=ctx.pub.offset, epoch=self.position.epoch)
        await super().on_publication(ctx)

    async def wait_for(self, condition: Callable[[], bool], seconds: float) -> None:
        async def until() -> None:
            while not condition():
                self.changed.clear()
                await self.changed.wait()

        await within(until(), seconds)

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        self.subscribed.append(ctx)
        self.changed.set()
        if ctx.stream_position is not None and (self.position is None or ctx.stream_position.offset):
            self.position = ctx.stream_position


async def wait_for_count(tracker: Tracker, count: int, seconds: float) -> None:
    await tracker.wait_for(lambda: len(tracker.values) >= count, seconds)


@pytest.fixture
async def balancer(two_gateways: tuple[ServiceProcess, ServiceProcess]) -> AsyncIterator[TcpBalancer]:
    backends = [("127.0.0.1", int(gw.env["_PORT"])) for gw in two_gateways]
    lb = await TcpBalancer(backends).start()
    yield lb
    await lb.stop()


async def test_recovery_on_the_other_gateway(two_gateways: tuple[ServiceProcess, ServiceProcess]) -> None:
    gw1, gw2 = two_gateways
    publisher = sdk_client(ws_url(gw2), "alice")
    first = sdk_client(ws_url(gw1), "bob")
    tracker = Tracker()
    await within(publisher.connect())
    await within(first.connect())
    sub = first.new_subscription("stream:cross", events=tracker)
    await sub.subscribe()
    await sub.ready(timeout=5)
    await publisher.publish("stream:cross", {"n": 0})
    await wait_for_count(tracker, 1, 5)
    position = tracker.position
    assert position is not None
    assert position.offset > 0
    await first.disconnect()

    for i in range(1, 51):
        await publisher.publish("stream:cross", {"n": i})

    async def saved_position(channel: str) -> StreamPosition:
        assert position is not None
        return position

    second = sdk_client(ws_url(gw2), "bob")
    resumed = Tracker()
    await within(second.connect())
    sub2 = second.new_subscription("stream:cross", events=resumed, get_state=saved_position)
    await sub2.subscribe()
    await wait_for_count(resumed, 50, 10)
    assert resumed.values == [{"n": i} for i in range(1, 51)]
    assert resumed.subscribed[0].was_recovering is True
    assert resumed.subscribed[0].recovered is True
    await second.disconnect()
    await publisher.disconnect()


async def test_gateway_killed_mid_stream_loses_nothing(
    two_gateways: tuple[ServiceProcess, ServiceProcess], balancer: TcpBalancer, nats_cluster: NatsCluster
) -> None:
    gw1, _ = two_gateways
    url = f"ws://127.0.0.1:{balancer.port}/connection/websocket"
    clients: list[Client] = []
    trackers: list[Tracker] = []
    for i in range(3):
        tracker = Tracker()
        client = sdk_client(url, f"user{i}")
        await within(client.connect())
        sub = client.new_subscription("stream:kill", events=tracker)
        await sub.subscribe()
        await sub.ready(timeout=5)
        clients.append(client)
        trackers.append(tracker)

    nc = await connect(nats_cluster.urls, name="backend")
    total = 5000

    stored = 0
    progress = asyncio.Event()

    async def produce() -> None:
        nonlocal stored
        for start in range(0, total, 25):
            await asyncio.gather(
                *(
                    publish(nc, "stream:kill", json.dumps({"n": n}).encode(), history=True, idempotency_key=f"k{n}")
                    for n in range(start, start + 25)
                )
            )
            stored += 25
            progress.set()

    async def stored_at_least(count: int) -> None:
        while stored < count:
            progress.clear()
            await progress.wait()

    producer = asyncio.create_task(produce())
    await within(wait_for_count(trackers[0], 500, 20), 25)
    balancer.refusing = True
    gw1.kill()  # SIGKILL: the clients' sockets die...
    await within(stored_at_least(min(stored + 250, total)), 30)  # ...publications go on while they are away...
    balancer.refusing = False  # ...and they reconnect through the balancer to gateway 2
    await within(producer, 120)
    for tracker in trackers:
        await wait_for_count(tracker, total, 60)
        # Publication order is by offset; gather() may store a batch out of n order,
        # so compare as offsets were assigned: every n exactly once.
        assert len(tracker.values) == total
        assert sorted(v["n"] for v in tracker.values) == list(range(total))
        assert tracker.offsets == sorted(set(tracker.offsets)), "offsets must strictly increase"
        assert any(ctx.was_recovering and ctx.recovered for ctx in tracker.subscribed)
    for client in clients:
        await client.disconnect()
    await nc.close()


async def test_outage_longer_than_history_is_reported_as_not_recovered(
    two_gateways: tuple[ServiceProcess, ServiceProcess], balancer: TcpBalancer
) -> None:
    gw1, gw2 = two_gateways
    publisher = sdk_client(ws_url(gw2), "alice")
    client = sdk_client(f"ws://127.0.0.1:{balancer.port}/connection/websocket", "bob")
    tracker = Tracker()
    await within(publisher.connect())
    await within(client.connect())
    sub = client.new_subscription("tiny:t", events=tracker)
    await sub.subscribe()
    await sub.ready(timeout=5)
    await publisher.publish("tiny:t", {"n": 0})
    await wait_for_count(tracker, 1, 5)

    balancer.refusing = True  # the client's network is down...
    gw1.kill()  # ...and its gateway dies
    for i in range(1, 11):  # history_size is 5: the client's position is trimmed away
        await publisher.publish("tiny:t", {"n": i})
    balancer.refusing = False

    await tracker.wait_for(lambda: len(tracker.subscribed) >= 2, 20)
    assert tracker.subscribed[1].was_recovering is True
    assert tracker.subscribed[1].recovered is False
    assert tracker.values == [{"n": 0}], "no partial set"
    await client.disconnect()
    await publisher.disconnect()


async def stream_leader(admin: Nats, avoid: str) -> str:
    """The channel stream's leader, stepped down until it is not `avoid`."""
    js = admin.jetstream(timeout=timeout(5))
    for _ in range(50):
        info = await js.stream_info(DURABLE_STREAM)
        leader = info.cluster.leader if info.cluster else None
        if leader and leader != avoid:
            return leader
        if leader == avoid:
            await admin.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{DURABLE_STREAM}", b"", timeout=timeout(5))
        await asyncio.sleep(0.2)
    raise AssertionError(f"the stream never had a leader off {avoid}")


@pytest.mark.parametrize("victim", ["publisher's node", "stream leader"])
async def test_acknowledged_publications_survive_a_nats_node_dying(
    two_gateways: tuple[ServiceProcess, ServiceProcess], nats_cluster: NatsCluster, victim: str
) -> None:
    """A backend publishes 600 publications one by one and a NATS node is SIGKILLed
    after the 200th: its own node (it reconnects elsewhere) or the stream's leader
    (an election). Every publish is acknowledged (the library retries with the
    idempotency key, no failure reaches the backend), each is stored once, in
    order, and a subscriber on gateway 2 (node 2, never the victim) receives
    every one exactly once."""
    _, gw2 = two_gateways
    nc = await connect(nats_cluster.urls, name="backend", randomize=False)  # node 1 first
    tracker = Tracker()
    subscriber = sdk_client(ws_url(gw2), "watcher")
    await within(subscriber.connect())
    sub = subscriber.new_subscription(DURABLE, events=tracker)
    await within(sub.subscribe())
    await within(sub.ready())
    try:
        if victim == "stream leader":
            leader = await within(stream_leader(nc, avoid="n2"), 30)
        else:
            leader = "n1"
        [node] = [n for n in nats_cluster.nodes if n.name == leader]
        acked: list[int] = []
        for n in range(600):
            if n == 200:
                node.kill()
            offset = await within(
                publish(nc, DURABLE, json.dumps({"n": n}).encode(), history=True, idempotency_key=f"d{n}"), 30
            )
            assert offset > 0
            acked.append(n)

        await wait_for_count(tracker, 600, 60)
        assert [v["n"] for v in tracker.values] == acked, "delivered exactly once each, in order"
        assert tracker.offsets == sorted(set(tracker.offsets))

        request = HistoryRequest(channel=DURABLE, limit=-1)
        msg = await nc.request("meshcast.history.v1.history", request.SerializeToString(), timeout=timeout(20))
        reply = HistoryReply()
        reply.ParseFromString(msg.data)
        assert not reply.HasField("error"), reply.error
        stored = [json.loads(p.publication.data)["n"] for p in reply.publications]
        assert stored == acked, "stored once each, in order"
    finally:
        await within(subscriber.disconnect())
        await nc.close()
