"""Presence membership without I/O: ordering, losses, snapshots, expiry."""

from __future__ import annotations

from meshcast.gateway.presence import LocalPresence
from meshcast.presence.state import PresenceState
from meshcast.proto.bus_pb2 import Publisher
from meshcast.proto.presence_pb2 import GatewayHeartbeat, PresenceEvent


def info(client: str, user: str = "u") -> Publisher:
    return Publisher(user=user, client=client)


def known(state: PresenceState, gateway: str = "g") -> None:
    """`gateway` is synced (empty) at version 0."""
    state.snapshot(gateway, 0, [], now=0)


def test_joins_and_leaves_in_order_count_clients_and_users() -> None:
    gw = LocalPresence("g")
    state = PresenceState()
    known(state)
    for event in (gw.join("c", info("1", "alice")), gw.join("c", info("2", "alice")), gw.join("c", info("3", "bob"))):
        assert not state.event(event, now=1)
    members = state.channel("c")
    assert (len(members.clients), len(members.users)) == (3, 2)
    leave = gw.leave("c", "1")
    assert leave is not None
    assert not state.event(leave, now=2)
    assert set(state.channel("c").clients) == {"2", "3"}
    assert gw.leave("c", "nobody") is None


def test_a_missing_event_asks_for_a_snapshot() -> None:
    gw = LocalPresence("g")
    state = PresenceState()
    known(state)
    gw.join("c", info("1"))  # lost on the way
    assert state.event(gw.join("c", info("2")), now=1)


def test_unknown_gateway_asks_for_a_snapshot_and_its_events_wait_for_it() -> None:
    gw = LocalPresence("g")
    gw.join("c", info("1"))
    state = PresenceState()
    late = gw.join("c", info("2"))
    assert state.event(late, now=1)
    assert state.channel("c").clients == {}
    chunks = gw.snapshot(1000)
    # The snapshot was taken after the event; the held event is not applied twice.
    assert not state.snapshot("g", chunks[0].version, list(chunks[0].members), now=2)
    assert set(state.channel("c").clients) == {"1", "2"}


def test_events_newer_than_the_snapshot_apply_on_top_of_it() -> None:
    gw = LocalPresence("g")
    gw.join("c", info("1"))
    [chunk] = gw.snapshot(10)
    newer = gw.join("c", info("2"))
    state = PresenceState()
    state.event(newer, now=1)  # arrives first, waits
    assert not state.snapshot("g", chunk.version, list(chunk.members), now=2)
    assert set(state.channel("c").clients) == {"1", "2"}


def test_heartbeat_ahead_twice_or_with_another_count_asks_for_a_snapshot() -> None:
    state = PresenceState()
    known(state)
    assert not state.heartbeat(GatewayHeartbeat(gateway="g", version=3, members=3), now=1)
    assert state.heartbeat(GatewayHeartbeat(gateway="g", version=3, members=3), now=2)
    other = PresenceState()
    known(other)
    assert other.heartbeat(GatewayHeartbeat(gateway="g", version=0, members=5), now=1)


def test_silent_gateway_expires_with_all_its_members() -> None:
    gw = LocalPresence("g")
    state = PresenceState()
    known(state)
    state.event(gw.join("a", info("1")), now=0)
    state.event(gw.join("b", info("2")), now=0)
    state.heartbeat(gw.heartbeat(), now=10)
    assert state.expire(now=20, timeout=15) == []
    [gone] = state.expire(now=26, timeout=15)
    assert gone.gateway == "g"
    assert {m.channel for m in gone.members} == {"a", "b"}
    assert state.channel("a").clients == {}
    assert state.gateways() == []


def test_snapshot_is_chunked_and_complete() -> None:
    gw = LocalPresence("g")
    for i in range(25):
        gw.join(f"c{i % 3}", info(str(i)))
    chunks = gw.snapshot(10)
    assert [len(c.members) for c in chunks] == [10, 10, 5]
    assert [c.last for c in chunks] == [False, False, True]
    assert {c.version for c in chunks} == {25}
    assert len(gw.snapshot(1000)) == 1
    empty = LocalPresence("e").snapshot(10)
    assert len(empty) == 1
    assert empty[0].last


def test_kind_of_events() -> None:
    gw = LocalPresence("g")
    assert gw.join("c", info("1")).kind == PresenceEvent.JOIN
    leave = gw.leave("c", "1")
    assert leave is not None
    assert leave.kind == PresenceEvent.LEAVE
    assert gw.heartbeat().version == 2
