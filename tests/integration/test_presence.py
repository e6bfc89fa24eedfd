"""Presence: two gateways and presence instances in this process, real NATS."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from meshcast.gateway.app import Gateway
from meshcast.presence.app import PresenceApp
from meshcast.testing import timeout, wait_until_async, within

from .harness import GatewayFactory, JsonClient, PresenceFactory, connected_client, open_client, token

NAMESPACES = """
namespaces:
  - name: room
    presence: true
    join_leave: true
    allow_publish: true
  - name: open
    presence: true
    allow_presence_without_subscribe: true
  - name: quiet
    allow_publish: true
"""


# Presence's timings, tight (scaled): a new instance waits 0.3 s for the gateways'
# snapshots, a gateway silent for 1 s has expired, checked every 0.1 s.
PRESENCE: dict[str, Any] = {
    "startup_sync_wait": timeout(0.3),
    "gateway_timeout": timeout(1.0),
    "sweep_interval": 0.1,
}


class Cluster:
    def __init__(self, make_presence: PresenceFactory, make_gateway: GatewayFactory) -> None:
        self.make_presence = make_presence
        self.make_gateway = make_gateway
        self.presence: list[PresenceApp] = []
        self.gateways: list[Gateway] = []

    async def add_presence(self, **overrides: Any) -> PresenceApp:
        app = await self.make_presence(**PRESENCE, **overrides)
        self.presence.append(app)
        return app

    async def add_gateway(self, **overrides: Any) -> Gateway:
        gateway = await self.make_gateway(NAMESPACES, presence_heartbeat_interval=0.2, **overrides)
        self.gateways.append(gateway)
        return gateway


@pytest.fixture
async def cluster(make_presence: PresenceFactory, make_gateway: GatewayFactory) -> Cluster:
    cluster = Cluster(make_presence, make_gateway)
    await cluster.add_presence()
    await cluster.add_gateway()
    await cluster.add_gateway()
    return cluster


async def presence_of(client: JsonClient, channel: str) -> dict[str, Any]:
    reply = await client.command("presence", {"channel": channel})
    assert "presence" in reply, reply
    result: dict[str, Any] = reply["presence"].get("presence", {})
    return result


async def stats_of(client: JsonClient, channel: str) -> dict[str, int]:
    reply = await client.command("presence_stats", {"channel": channel})
    assert "presence_stats" in reply, reply
    stats: dict[str, int] = reply["presence_stats"]
    return stats


async def eventually(
    client: JsonClient, channel: str, predicate: Callable[[dict[str, Any]], bool], what: str, seconds: float = 5.0
) -> None:
    """Ask presence until `predicate` holds (membership converges asynchronously)."""
    deadline = asyncio.get_running_loop().time() + timeout(seconds)
    last: dict[str, Any] = {}
    while asyncio.get_running_loop().time() < deadline:
        last = await presence_of(client, channel)
        if predicate(last):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: {last}")


async def test_users_on_two_gateways_see_each_other_and_counts_dedupe_users(cluster: Cluster) -> None:
    gw1, gw2 = cluster.gateways
    alice_tab1 = await connected_client(gw1, "alice")
    alice_tab2 = await connected_client(gw2, "alice")
    bob = await connected_client(gw2, "bob")
    for client in (alice_tab1, alice_tab2, bob):
        assert "subscribe" in await client.command("subscribe", {"channel": "room:a"})
    await eventually(alice_tab1, "room:a", lambda p: len(p) == 3, "three clients")
    members = await presence_of(bob, "room:a")
    assert sorted(m["user"] for m in members.values()) == ["alice", "alice", "bob"]
    assert all(client_id == m["client"] for client_id, m in members.items())
    assert await stats_of(bob, "room:a") == {"num_clients": 3, "num_users": 2}

    await alice_tab2.command("unsubscribe", {"channel": "room:a"})
    await eventually(bob, "room:a", lambda p: len(p) == 2, "tab left")
    assert await stats_of(bob, "room:a") == {"num_clients": 2, "num_users": 2}
    await alice_tab1.ws.close()
    await eventually(bob, "room:a", lambda p: len(p) == 1, "closed connection left")


async def test_join_and_leave_pushes_reach_the_other_gateway(cluster: Cluster) -> None:
    gw1, gw2 = cluster.gateways
    watcher = await connected_client(gw1, "watcher")
    await watcher.command("subscribe", {"channel": "room:jl", "join_leave": True})
    carol = await connected_client(gw2, "carol")
    await carol.command("subscribe", {"channel": "room:jl"})
    pushes: list[dict[str, Any]] = []
    while not any("join" in p and p["join"]["info"]["user"] == "carol" for p in pushes):
        pushes.append((await watcher.next_push())["push"])
    await carol.ws.close()
    while not any("leave" in p and p["leave"]["info"]["user"] == "carol" for p in pushes):
        pushes.append((await watcher.next_push())["push"])


async def test_presence_permissions(cluster: Cluster) -> None:
    gw1, _ = cluster.gateways
    alice = await connected_client(gw1, "alice")
    assert (await alice.command("presence", {"channel": "room:x"}))["error"]["code"] == 103
    assert (await alice.command("presence", {"channel": "quiet:x"}))["error"]["code"] == 108
    assert "presence" in await alice.command("presence", {"channel": "open:x"})


async def test_restarted_presence_instance_has_the_same_members(cluster: Cluster) -> None:
    gw1, gw2 = cluster.gateways
    clients = []
    for i in range(100):
        client = await connected_client(gw1 if i % 2 else gw2, f"user{i % 40}")
        await client.command("subscribe", {"channel": "room:many"})
        clients.append(client)
    await eventually(clients[0], "room:many", lambda p: len(p) == 100, "100 members")
    before = await presence_of(clients[0], "room:many")
    old = cluster.presence.pop()
    await old.stop()
    await cluster.add_presence()
    after = await presence_of(clients[1], "room:many")
    assert after == before
    assert await stats_of(clients[2], "room:many") == {"num_clients": 100, "num_users": 40}


async def test_two_presence_instances_agree(cluster: Cluster) -> None:
    second = await cluster.add_presence()
    gw1, gw2 = cluster.gateways
    alice = await connected_client(gw1, "alice")
    bob = await connected_client(gw2, "bob")
    for client in (alice, bob):
        await client.command("subscribe", {"channel": "room:two"})
    await eventually(alice, "room:two", lambda p: len(p) == 2, "both joined")
    first = cluster.presence[0]
    await wait_until_async(
        lambda: (
            first.state.channel("room:two").clients.keys() == second.state.channel("room:two").clients.keys()
            and len(second.state.channel("room:two").clients) == 2
        ),
        what="instances agree",
    )


async def test_large_presence_arrives_whole_in_json_and_protobuf(cluster: Cluster) -> None:
    from meshcast.proto.client_pb2 import Command, ConnectRequest, PresenceRequest, Reply, SubscribeRequest
    from meshcast.protocol.codec import encode_varint

    from .harness import open_ws, token

    old = cluster.presence.pop()
    await old.stop()
    await cluster.add_presence(query_chunk=7)  # 20 members: three parts
    gw1, _ = cluster.gateways
    clients = []
    for i in range(20):
        client = await connected_client(gw1, f"user{i}")
        await client.command("subscribe", {"channel": "room:big"})
        clients.append(client)
    await eventually(clients[0], "room:big", lambda p: len(p) == 20, "20 members")
    members = await presence_of(clients[0], "room:big")
    assert {m["user"] for m in members.values()} == {f"user{i}" for i in range(20)}

    ws = await open_ws(gw1, subprotocols=["centrifuge-protobuf"])
    for cmd in (
        Command(id=1, connect=ConnectRequest(token=token("pb"))),
        Command(id=2, subscribe=SubscribeRequest(channel="room:big")),
        Command(id=3, presence=PresenceRequest(channel="room:big")),
    ):
        body = cmd.SerializeToString()
        await ws.send(encode_varint(len(body)) + body)
    reply = Reply()
    while reply.id != 3:
        raw = await ws.recv()
        assert isinstance(raw, bytes)
        reply = Reply()
        reply.ParseFromString(raw[1:] if raw[0] < 128 else raw[2:])
    users = {info.user for info in reply.presence.presence.values()}
    assert {f"user{i}" for i in range(20)} <= users
    assert all(client_id == info.client for client_id, info in reply.presence.presence.items())


async def test_a_gateway_whose_heartbeats_were_lost_is_told_it_expired_and_closes_its_connections(
    cluster: Cluster,
) -> None:
    """Presence announced its members leaving (and the events service their disconnects):
    told so, the gateway closes every connection (3010, the SDKs reconnect), and a member
    coming back is a new connection, told once."""
    gw1, gw2 = cluster.gateways
    watcher = await connected_client(gw1, "watcher")
    await watcher.command("subscribe", {"channel": "room:told", "join_leave": True})
    member = await connected_client(gw2, "member")
    await member.command("subscribe", {"channel": "room:told"})
    await eventually(watcher, "room:told", lambda p: len(p) == 2, "member joined")
    # Its heartbeats are lost on the way (as behind a cut route) while it runs on,
    # unaware: it sees no lapse of its own, presence expires its epoch.
    assert gw2._ctx is not None
    reporter = gw2._ctx.presence
    beat = reporter._tasks[0]
    beat.cancel()
    await eventually(watcher, "room:told", lambda p: len(p) == 1, "member expired")
    reporter._last_sent = time.monotonic() + 3600  # no lapse seen
    reporter._tasks[0] = asyncio.create_task(reporter._beat())
    # Presence refuses the ended epoch and tells the gateway, which closes the connection.
    assert await member.close_code(seconds=10) == 3010
    assert reporter.local.epoch == 2
    again = await connected_client(gw2, "member")
    await again.command("subscribe", {"channel": "room:told"})
    await eventually(watcher, "room:told", lambda p: len(p) == 2, "member back")
    told: list[str] = []
    while told.count("join") < 2:
        push = (await watcher.next_push())["push"]
        for kind in ("join", "leave"):
            if kind in push and push[kind]["info"]["user"] == "member":
                told.append(kind)
    assert told == ["join", "leave", "join"]


async def test_members_too_large_for_one_nats_message_still_sync_and_answer(cluster: Cluster) -> None:
    """20 members of 55 KB of info are more than NATS' 1 MiB message: the gateway's snapshot
    and the presence answer come in parts sized by bytes, so a new presence instance still
    rebuilds from the snapshot and `presence` lists every member."""
    gateway = await cluster.add_gateway(max_message_size=200_000)
    members = []
    for n in range(20):
        client = await open_client(gateway, max_size=None)  # the answer is a 1.1 MB frame
        reply = await client.command("connect", {"token": token(f"user{n}", bio="x" * 55_000)})
        assert "connect" in reply, reply
        assert "subscribe" in await client.command("subscribe", {"channel": "room:big"})
        members.append(client)
    # A new instance, and the old one gone: what it knows came from the gateways' snapshots.
    fresh = await cluster.add_presence()
    first = cluster.presence.pop(0)
    await first.stop()
    assert fresh.ready()
    listed = await within(presence_of(members[0], "room:big"), 10)
    assert len(listed) == 20
    assert all(len(info["conn_info"]["bio"]) == 55_000 for info in listed.values())
