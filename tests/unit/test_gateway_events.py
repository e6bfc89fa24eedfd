"""The gateway's event outbox: pairs, ids, order, and what a full queue or an expiry drops."""

from __future__ import annotations

from meshcast.bus import Subjects
from meshcast.gateway.events import EventOutbox, Queued
from meshcast.protocol import UnsubscribeCode

SUBJECTS = Subjects()


def outbox(limit: int = 100) -> EventOutbox:
    clock = iter(range(1000, 10**6, 10))
    return EventOutbox("gw", SUBJECTS, limit=limit, epoch=lambda: 7, clock_ms=lambda: next(clock))


def drain(box: EventOutbox) -> list[Queued]:
    queued = box.peek(len(box))
    box.commit(box.generation, len(queued))
    return queued


def test_every_start_gets_one_end_with_deterministic_ids_in_order() -> None:
    box = outbox()
    box.connected("c1", "alice", b'{"a":1}', protocol="json", remote_addr="10.0.0.1", name="js", version="6")
    box.subscribed("c1", "chat:x", b"ci")
    box.subscribed("c1", "chat:x")  # twice: the first stands
    box.unsubscribed("c1", "chat:x", UnsubscribeCode.CLIENT)
    box.subscribed("c1", "chat:x")
    box.published("c1", "alice", "chat:x", b"hi")
    box.disconnected("c1", 3000, "bye")
    box.disconnected("c1", 3000, "bye")  # ends once
    queued = drain(box)
    assert [q.msg_id for q in queued] == [
        "connect:c1",
        "subscribe:gw:2",
        "unsubscribe:gw:2",
        "subscribe:gw:4",
        "publication:gw:5",
        "unsubscribe:gw:4",  # its connection closed: ended before the disconnect
        "disconnect:c1",
    ]
    assert [q.event.sequence for q in queued] == [1, 2, 3, 4, 5, 6, 7]
    assert {q.event.gateway for q in queued} == {"gw"}
    assert {q.event.epoch for q in queued} == {7}
    assert queued[0].subject == "meshcast.events.v1.connect"
    assert queued[1].subject == "meshcast.events.v1.subscribe.chat.chat~3Ax"
    connect = queued[0].event.connect
    assert (connect.user, connect.remote_addr, connect.protocol, connect.name) == ("alice", "10.0.0.1", "json", "js")
    assert queued[2].event.unsubscribe.subscription == 2
    assert queued[5].event.unsubscribe.code == UnsubscribeCode.DISCONNECT
    disconnect = queued[6].event.disconnect
    assert (disconnect.code, disconnect.reason, disconnect.duration_ms) == (3000, "bye", 60)
    assert not disconnect.gateway_died


def test_a_full_queue_drops_whole_connections_and_subscriptions_never_an_end() -> None:
    box = outbox(limit=2)
    box.connected("a", "u", b"", protocol="json")
    box.subscribed("a", "x")
    box.connected("b", "u", b"", protocol="json")  # full: dropped, and all of b with it
    box.subscribed("b", "x")
    box.subscribed("a", "y")  # full: this subscription is never told
    box.unsubscribed("a", "y", UnsubscribeCode.CLIENT)
    box.disconnected("b", 3000, "")
    box.disconnected("a", 3000, "")  # ends go in past the limit
    assert box.dropped == 2
    queued = drain(box)
    assert [q.msg_id for q in queued] == ["connect:a", "subscribe:gw:2", "unsubscribe:gw:2", "disconnect:a"]
    # The gaps in the sequence show what was never told.
    assert [q.event.sequence for q in queued] == [1, 2, 5, 6]


def test_an_expiry_drops_the_queue_and_every_connection_and_a_batch_in_flight_is_not_committed() -> None:
    box = outbox()
    box.connected("a", "u", b"", protocol="json")
    box.subscribed("a", "x")
    generation = box.generation
    in_flight = box.peek(10)
    assert box.expired() == 2
    box.commit(generation, len(in_flight))  # its acks came back after the expiry: ignored
    box.unsubscribed("a", "x", UnsubscribeCode.DISCONNECT)
    box.disconnected("a", 3010, "insufficient state")
    assert len(box) == 0
    box.connected("b", "u", b"", protocol="json")  # a new connection after it
    assert [q.msg_id for q in drain(box)] == ["connect:b"]


def test_what_was_stored_leaves_the_queue_and_the_rest_is_sent_again_first() -> None:
    box = outbox()
    for n in range(3):
        box.connected(f"c{n}", "u", b"", protocol="json")
    batch = box.peek(10)
    box.commit(box.generation, 1)
    assert [q.msg_id for q in box.peek(10)] == [q.msg_id for q in batch[1:]]
    box.refuse_first(box.generation)
    assert [q.msg_id for q in box.peek(10)] == ["connect:c2"]
