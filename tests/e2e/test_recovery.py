"""No silent loss, end to end: unmodified SDK clients, real gateways, a 3-node NATS cluster."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from centrifuge import Client, StreamPosition, SubscribedContext

from meshcast.bus import connect, publish
from meshcast.proto.history_pb2 import HistoryReply, HistoryRequest
from meshcast.testing import NatsCluster, ServiceProcess, within, ws_url
from meshcast.testing.balancer import TcpBalancer

from .sdk import Recorder, sdk_client

pytestmark = pytest.mark.e2e


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

    async def produce() -> None:
        for start in range(0, total, 25):
            await asyncio.gather(
                *(
                    publish(nc, "stream:kill", json.dumps({"n": n}).encode(), history=True, idempotency_key=f"k{n}")
                    for n in range(start, start + 25)
                )
            )

    producer = asyncio.create_task(produce())
    await within(wait_for_count(trackers[0], 500, 20), 25)
    balancer.refusing = True
    gw1.kill()  # SIGKILL: the clients' sockets die...
    await asyncio.sleep(0.5)  # ...publications go on while they are away...
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


async def test_acknowledged_publications_survive_a_nats_node_dying(
    two_gateways: tuple[ServiceProcess, ServiceProcess], nats_cluster: NatsCluster
) -> None:
    nc = await connect(nats_cluster.urls, name="backend", randomize=False)
    acked: list[int] = []
    failures = 0
    loop = asyncio.get_running_loop()
    for n in range(600):
        if n == 200:
            nats_cluster.nodes[1].kill()
        give_up = loop.time() + 30
        while loop.time() < give_up:
            # A backend's retry: the same idempotency key, so a publication whose
            # ack was lost is not stored twice.
            try:
                await publish(
                    nc,
                    "stream:durable",
                    json.dumps({"n": n}).encode(),
                    history=True,
                    idempotency_key=f"d{n}",
                    ack_timeout=2,
                )
            except Exception:
                failures += 1
                await asyncio.sleep(0.1)
                continue
            acked.append(n)
            break
    assert acked == list(range(600))

    request = HistoryRequest(channel="stream:durable", limit=-1)
    msg = await nc.request("meshcast.history.v1.history", request.SerializeToString(), timeout=10)
    reply = HistoryReply()
    reply.ParseFromString(msg.data)
    assert not reply.HasField("error"), reply.error
    stored = [json.loads(p.publication.data)["n"] for p in reply.publications]
    assert stored == acked, f"{failures} failed attempts; stored once each, in order"
    await nc.close()
