"""Two gateway processes on a 3-node NATS cluster, with the unmodified centrifuge-python SDK."""

from __future__ import annotations

import asyncio

import pytest
from centrifuge import ReplyError

from meshcast.testing import NatsCluster, ServiceProcess, wait_until, within, ws_url

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


async def test_live_delivery_continues_when_a_nats_node_dies(
    two_gateways: tuple[ServiceProcess, ServiceProcess], nats_cluster: NatsCluster
) -> None:
    gw1, gw2 = two_gateways
    alice = sdk_client(ws_url(gw1), "alice")
    bob = sdk_client(ws_url(gw2), "bob")
    recorder = Recorder()
    try:
        await within(alice.connect())
        await within(bob.connect())
        sub = bob.new_subscription("chat:failover", events=recorder)
        await sub.subscribe()
        await sub.ready(timeout=5)
        await warm_up(alice, "chat:failover", recorder)
        await alice.publish("chat:failover", {"phase": "before"})
        assert await recorder.next() == {"phase": "before"}

        nats_cluster.nodes[0].kill()  # gateway 1's node: it must fail over to node 2 or 3

        temporary_errors: list[bool] = []

        async def delivered_after_kill() -> None:
            n = 0
            while True:
                n += 1
                try:
                    await alice.publish("chat:failover", {"phase": "after", "n": n}, timeout=2)
                except ReplyError as err:
                    # While JetStream fails over, a publish is refused with a temporary error.
                    temporary_errors.append(err.temporary)
                    await asyncio.sleep(0.1)
                    continue
                try:
                    got = await asyncio.wait_for(recorder.received.get(), 0.5)
                except TimeoutError:
                    continue
                if got.get("phase") == "after":
                    return

        await within(delivered_after_kill(), 20)
        assert all(temporary_errors), "a refused publish must be a temporary error"
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
