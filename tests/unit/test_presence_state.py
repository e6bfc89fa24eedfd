"""Presence membership without I/O: ordering, losses, snapshots, epochs, expiry."""

from __future__ import annotations

import re

from meshcast.bus import Subjects
from meshcast.gateway.presence import LocalPresence
from meshcast.presence.state import Epoch, Need, PresenceState
from meshcast.proto.bus_pb2 import Publisher
from meshcast.proto.presence_pb2 import GatewayHeartbeat, Member, PresenceEvent, SnapshotChunk


def info(client: str, user: str = "u") -> Publisher:
    return Publisher(user=user, client=client)


def known(state: PresenceState, gateway: str = "g") -> None:
    """`gateway` is synced (empty) at epoch 1, version 0."""
    state.snapshot(gateway, 1, 0, [], now=0)


def apply(state: PresenceState, chunk: SnapshotChunk, now: float) -> Need:
    return state.snapshot(chunk.gateway, chunk.epoch, chunk.version, list(chunk.members), now)


def test_joins_and_leaves_in_order_count_clients_and_users() -> None:
    gw = LocalPresence("g")
    state = PresenceState()
    known(state)
    for event in (gw.join("c", info("1", "alice")), gw.join("c", info("2", "alice")), gw.join("c", info("3", "bob"))):
        assert state.event(event, now=1) is Need.NOTHING
    members = state.channel("c")
    assert (len(members.clients), len(members.users)) == (3, 2)
    leave = gw.leave("c", "1")
    assert leave is not None
    assert state.event(leave, now=2) is Need.NOTHING
    assert set(state.channel("c").clients) == {"2", "3"}
    assert gw.leave("c", "nobody") is None


def test_a_missing_event_asks_for_a_snapshot() -> None:
    gw = LocalPresence("g")
    state = PresenceState()
    known(state)
    gw.join("c", info("1"))  # lost on the way
    assert state.event(gw.join("c", info("2")), now=1) is Need.SNAPSHOT


def test_unknown_gateway_asks_for_a_snapshot_and_its_events_wait_for_it() -> None:
    gw = LocalPresence("g")
    gw.join("c", info("1"))
    state = PresenceState()
    late = gw.join("c", info("2"))
    assert state.event(late, now=1) is Need.SNAPSHOT
    assert state.channel("c").clients == {}
    [chunk] = gw.snapshot(1000)
    # The snapshot was taken after the event; the held event is not applied twice.
    assert apply(state, chunk, now=2) is Need.NOTHING
    assert set(state.channel("c").clients) == {"1", "2"}


def test_events_newer_than_the_snapshot_apply_on_top_of_it() -> None:
    gw = LocalPresence("g")
    gw.join("c", info("1"))
    [chunk] = gw.snapshot(10)
    newer = gw.join("c", info("2"))
    state = PresenceState()
    state.event(newer, now=1)  # arrives first, waits
    assert apply(state, chunk, now=2) is Need.NOTHING
    assert set(state.channel("c").clients) == {"1", "2"}


def test_heartbeat_ahead_twice_or_with_another_count_asks_for_a_snapshot() -> None:
    state = PresenceState()
    known(state)
    ahead = GatewayHeartbeat(gateway="g", epoch=1, version=3, members=3)
    assert state.heartbeat(ahead, now=1) is Need.NOTHING
    assert state.heartbeat(ahead, now=2) is Need.SNAPSHOT
    other = PresenceState()
    known(other)
    assert other.heartbeat(GatewayHeartbeat(gateway="g", epoch=1, version=0, members=5), now=1) is Need.SNAPSHOT


def test_silent_gateway_expires_with_all_its_members() -> None:
    gw = LocalPresence("g")
    state = PresenceState()
    known(state)
    state.event(gw.join("a", info("1")), now=0)
    state.event(gw.join("b", info("2")), now=0)
    state.heartbeat(gw.heartbeat(), now=10)
    assert state.due(now=20, timeout=15) == []
    assert state.due(now=26, timeout=15) == [Epoch("g", 1)]
    gone = state.end("g", 1, now=26)
    assert gone is not None
    assert (gone.gateway, gone.epoch, gone.version) == ("g", 1, 2)
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


# Epochs: what subscribers are told agrees with what presence lists.

Told = list[tuple[str, str]]  # ("join" | "leave", client)


def believed(told: Told) -> set[str]:
    present: set[str] = set()
    for kind, client in told:
        (present.add if kind == "join" else present.discard)(client)
    return present


def send(gw: LocalPresence, states: list[PresenceState], told: Told, event: PresenceEvent | None, now: float) -> None:
    """What the gateway's sender does with one queued event: sent only while its epoch stands."""
    if event is None or not gw.sendable(event):
        return
    told.append(("join" if event.kind == PresenceEvent.JOIN else "leave", event.info.client))
    for state in states:
        need = state.event(event, now)
        if need is Need.SNAPSHOT:
            [chunk] = gw.snapshot(1000)
            apply(state, chunk, now)


def listed(state: PresenceState) -> set[str]:
    return set(state.channel("c").clients)


def test_a_paused_gateway_is_told_leaving_once_and_joining_again_once() -> None:
    gw = LocalPresence("g")
    states = [PresenceState(), PresenceState()]
    told: Told = []
    for state in states:
        known(state)
    send(gw, states, told, gw.join("c", info("stay")), now=0)
    send(gw, states, told, gw.join("c", info("gone")), now=0)
    assert all(listed(s) == believed(told) == {"stay", "gone"} for s in states)

    # Stopped: both instances find it due; the lease lets one announce.
    for n, state in enumerate(states):
        assert state.due(now=20, timeout=15) == [Epoch("g", 1)]
        gone = state.end("g", 1, now=20)
        assert gone is not None
        if n == 0:
            told.extend(("leave", m.info.client) for m in gone.members)
    # A client closed while it was stopped; the gateway reads that when it continues.
    unsent = gw.leave("c", "gone")
    assert all(listed(s) == believed(told) == set() for s in states)

    # It asks, hears its epoch expired, and starts the next one.
    assert all(s.is_ended("g", 1) for s in states)
    joins = gw.next_epoch(expired=True)
    assert [(e.epoch, e.info.client) for e in joins] == [(2, "stay")]
    send(gw, states, told, unsent, now=21)
    assert all(s.heartbeat(gw.heartbeat(), now=21) is Need.SNAPSHOT for s in states)  # a new epoch
    for state in states:
        [chunk] = gw.snapshot(1000)
        assert apply(state, chunk, now=21) is Need.NOTHING
    for join in joins:
        send(gw, states, told, join, now=21)
    assert all(listed(s) == believed(told) == {"stay"} for s in states)
    assert [t for t in told if t[1] == "gone"] == [("join", "gone"), ("leave", "gone")]
    assert [t for t in told if t[1] == "stay"] == [("join", "stay"), ("leave", "stay"), ("join", "stay")]


def test_messages_of_an_expired_epoch_are_refused_and_the_gateway_is_to_be_told() -> None:
    gw = LocalPresence("g")
    state = PresenceState()
    known(state)
    state.event(gw.join("c", info("1")), now=0)
    assert state.end("g", 1, now=20) is not None
    assert state.ended_epoch("g") == 1
    late = gw.join("c", info("2"))
    assert state.event(late, now=21) is Need.TELL_EXPIRED
    assert state.heartbeat(gw.heartbeat(), now=21) is Need.TELL_EXPIRED
    [chunk] = gw.snapshot(1000)
    assert apply(state, chunk, now=21) is Need.TELL_EXPIRED
    assert state.channel("c").clients == {}
    assert state.gateways() == []


def test_a_resumed_epoch_keeps_its_members_and_its_next_epoch_syncs_silently() -> None:
    gw = LocalPresence("g")
    state = PresenceState()
    known(state)
    state.event(gw.join("c", info("1")), now=0)
    assert state.due(now=20, timeout=15) == [Epoch("g", 1)]
    state.resumed("g", 1, now=20)  # the gateway asked first: the lease says resumed
    assert state.due(now=21, timeout=15) == []
    leave = gw.leave("c", "1")  # queued while the gateway asked: still sent
    assert leave is not None
    assert gw.next_epoch(expired=False) == []
    assert gw.sendable(leave)
    assert state.event(leave, now=21) is Need.NOTHING
    assert state.channel("c").clients == {}
    later = gw.join("c", info("2"))
    assert later.epoch == 2
    assert state.event(later, now=22) is Need.SNAPSHOT
    [chunk] = gw.snapshot(1000)
    assert apply(state, chunk, now=22) is Need.NOTHING
    assert set(state.channel("c").clients) == {"2"}
    assert state.epoch_of("g") == 2


def test_an_epoch_that_moved_on_is_not_ended_and_stale_snapshots_are_asked_again() -> None:
    gw = LocalPresence("g")
    state = PresenceState()
    known(state)
    [old] = gw.snapshot(1000)
    gw.next_epoch(expired=False)
    state.heartbeat(gw.heartbeat(), now=1)  # epoch 2 seen
    assert apply(state, old, now=2) is Need.SNAPSHOT  # taken before it moved on
    assert state.end("g", 1, now=3) is None  # epoch 1 is over; epoch 2 lives
    assert state.gateways() == ["g"]
    [new] = gw.snapshot(1000)
    assert apply(state, new, now=3) is Need.NOTHING


def test_held_events_of_a_newer_epoch_wait_for_its_snapshot() -> None:
    gw = LocalPresence("g")
    gw.join("c", info("1"))
    [chunk] = gw.snapshot(1000)
    state = PresenceState()
    state.event(gw.join("c", info("2")), now=0)  # unknown gateway: held
    gw.next_epoch(expired=False)
    state.event(gw.join("c", info("3")), now=0)  # its next epoch
    assert apply(state, chunk, now=1) is Need.SNAPSHOT
    [chunk] = gw.snapshot(1000)
    assert apply(state, chunk, now=2) is Need.NOTHING
    assert set(state.channel("c").clients) == {"1", "2", "3"}


def test_an_instance_back_from_its_own_lapse_expires_nobody_at_once() -> None:
    state = PresenceState()
    known(state)
    state.refresh(now=100)
    assert state.due(now=110, timeout=15) == []
    assert state.due(now=116, timeout=15) == [Epoch("g", 1)]


def test_ended_epochs_are_forgotten_with_the_lease_bucket() -> None:
    state = PresenceState()
    known(state)
    state.end("g", 1, now=10)
    state.forget_ended(now=100, keep=600)
    assert state.is_ended("g", 1)
    state.forget_ended(now=611, keep=600)
    assert not state.is_ended("g", 1)


def test_gateway_epochs_ride_every_message_and_expired_ones_are_never_sent() -> None:
    gw = LocalPresence("g")
    first = gw.join("c", info("1"))
    gw.join("d", info("2"))
    assert (first.epoch, gw.heartbeat().epoch, gw.snapshot(10)[0].epoch) == (1, 1, 1)
    joins = gw.next_epoch(expired=True)
    assert not gw.sendable(first)
    assert sorted((e.channel, e.info.client, e.epoch) for e in joins) == [("c", "1", 2), ("d", "2", 2)]
    assert [e.version for e in joins] == [3, 4]
    assert all(gw.sendable(e) for e in joins)
    assert gw.heartbeat().epoch == gw.snapshot(10)[0].epoch == 2


def test_lease_keys_are_per_gateway_epoch_and_valid_kv_keys() -> None:
    keys = {Subjects.presence_lease(g, e) for g in ("gw-1", "gw.1", "gw~2E1", "", "ü *>") for e in (1, 2)}
    assert len(keys) == 10
    assert all(re.fullmatch(r"[-/_=.a-zA-Z0-9]+", key) for key in keys)
    assert Subjects.presence_lease("gw-1", 3) == "epoch.gw-1.3"


def test_a_gateway_older_than_epochs_comes_back_from_its_snapshot_as_before() -> None:
    state = PresenceState()
    legacy = GatewayHeartbeat(gateway="old", version=1, members=1)  # epoch 0
    assert state.heartbeat(legacy, now=0) is Need.SNAPSHOT
    assert state.snapshot("old", 0, 1, [Member(channel="c", info=info("1"))], now=0) is Need.NOTHING
    assert state.end("old", 0, now=20) is not None
    assert not state.is_ended("old", 0)
    assert state.heartbeat(legacy, now=21) is Need.SNAPSHOT
