"""The events service's ledger: what it derives from the events stream, exactly (no I/O).

`Stream` plays JetStream: it numbers what it stores and drops a message whose
Nats-Msg-Id it already holds (the duplicate window), so the tests can feed
the ledger's own announcements back as the service does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meshcast.bus import Subjects
from meshcast.events.ledger import Announcement, Ledger
from meshcast.gateway.events import EventOutbox
from meshcast.proto.events_pb2 import Disconnect, Event, GatewayExpired
from meshcast.protocol import UnsubscribeCode

SUBJECTS = Subjects()


@dataclass
class Stream:
    """Stored events in order, each id once, and the ledgers reading them."""

    messages: list[tuple[str, Event]] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)

    def store(self, msg_id: str, event: Event) -> bool:
        if msg_id in self.ids:
            return False
        self.ids.add(msg_id)
        self.messages.append((msg_id, event))
        return True

    def store_all(self, announcements: list[Announcement]) -> None:
        for a in announcements:
            self.store(a.msg_id, a.event)

    def read(self, ledger: Ledger, *, tell: bool = True) -> list[Announcement]:
        """Apply what `ledger` has not read; with `tell`, store what it derives at once."""
        told: list[Announcement] = []
        while ledger.seq < len(self.messages):
            seq = ledger.seq + 1
            msg_id, event = self.messages[seq - 1]
            new = ledger.apply(seq, 1000 + seq, msg_id, event)
            told.extend(new)
            if tell:
                self.store_all(new)
        return told

    def of(self, kind: str) -> list[Event]:
        return [e for _, e in self.messages if e.WhichOneof("kind") == kind]


class Gateway:
    """A gateway's outbox, stored into the stream as its publisher would."""

    def __init__(self, stream: Stream, name: str) -> None:
        self.stream = stream
        self.epoch = 1
        self.outbox = EventOutbox(name, SUBJECTS, limit=1000, epoch=lambda: self.epoch, clock_ms=lambda: 1)

    @property
    def name(self) -> str:
        return self.outbox.gateway

    def flush(self) -> None:
        for queued in self.outbox.peek(len(self.outbox)):
            self.stream.store(queued.msg_id, queued.event)
        self.outbox.commit(self.outbox.generation, len(self.outbox))

    def connect(self, client: str) -> None:
        self.outbox.connected(client, f"u-{client}", b"", protocol="json")
        self.flush()

    def subscribe(self, client: str, channel: str) -> None:
        self.outbox.subscribed(client, channel)
        self.flush()

    def unsubscribe(self, client: str, channel: str) -> None:
        self.outbox.unsubscribed(client, channel, UnsubscribeCode.CLIENT)
        self.flush()

    def disconnect(self, client: str) -> None:
        self.outbox.disconnected(client, 3000, "bye")
        self.flush()


def expired(gateway: str, epoch: int) -> Event:
    return Event(gateway=gateway, epoch=epoch, time_ms=5000, source=Event.PRESENCE, gateway_expired=GatewayExpired())


def expire(stream: Stream, gateway: str, epoch: int) -> None:
    stream.store(f"gateway_expired:{gateway}:{epoch}", expired(gateway, epoch))


def transitions(stream: Stream, channel: str) -> list[str]:
    return [
        kind
        for _, e in stream.messages
        if (kind := e.WhichOneof("kind") or "") in ("channel_occupied", "channel_vacated")
        and getattr(e, kind).channel == channel
    ]


def ends_per_client(stream: Stream) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for _, e in stream.messages:
        kind = e.WhichOneof("kind")
        if kind in ("connect", "disconnect"):
            seen.setdefault(getattr(e, kind).client, []).append(kind)
    return seen


def test_the_first_subscriber_anywhere_occupies_and_the_last_one_vacates_once_each() -> None:
    stream, ledger = Stream(), Ledger(SUBJECTS)
    one, two = Gateway(stream, "g1"), Gateway(stream, "g2")
    one.connect("a")
    two.connect("b")
    one.subscribe("a", "chat:x")
    two.subscribe("b", "chat:x")
    one.unsubscribe("a", "chat:x")
    two.unsubscribe("b", "chat:x")
    two.subscribe("b", "chat:x")
    told = stream.read(ledger, tell=False)
    assert [a.event.WhichOneof("kind") for a in told] == ["channel_occupied", "channel_vacated", "channel_occupied"]
    assert [a.msg_id for a in told] == [
        "channel_occupied:3:chat~3Ax",
        "channel_vacated:6:chat~3Ax",
        "channel_occupied:7:chat~3Ax",
    ]
    assert next(a.subject for a in told) == "meshcast.events.v1.channel_occupied.chat.chat~3Ax"
    assert all(a.event.source == Event.EVENTS and a.event.cause for a in told)
    assert ledger.occupied() == {"chat:x": 1}
    # Each is pending until the ledger reads it back from the stream.
    assert set(ledger.pending) == {a.msg_id for a in told}
    stream.store_all(told)
    stream.read(ledger)
    assert ledger.pending == {}


def test_a_dead_gateways_connections_end_with_its_own_ids_and_its_channels_vacate() -> None:
    stream, ledger = Stream(), Ledger(SUBJECTS)
    dead, alive = Gateway(stream, "g1"), Gateway(stream, "g2")
    dead.connect("a")
    dead.subscribe("a", "room")
    dead.subscribe("a", "shared")
    alive.connect("b")
    alive.subscribe("b", "shared")
    stream.read(ledger)
    before = len(stream.messages)
    expire(stream, "g1", 1)
    stream.read(ledger)
    kinds = [(e.WhichOneof("kind"), e.source) for _, e in stream.messages[before + 1 :]]
    assert kinds == [
        ("unsubscribe", Event.EVENTS),
        ("channel_vacated", Event.EVENTS),
        ("unsubscribe", Event.EVENTS),
        ("disconnect", Event.EVENTS),
    ]
    [disconnect] = stream.of("disconnect")
    assert disconnect.disconnect.gateway_died
    assert disconnect.disconnect.client == "a"
    assert disconnect.disconnect.duration_ms == 5000 - 1
    assert all(e.unsubscribe.gateway_died for e in stream.of("unsubscribe"))
    assert transitions(stream, "room") == ["channel_occupied", "channel_vacated"]
    assert transitions(stream, "shared") == ["channel_occupied"]  # b is still there
    assert ledger.open_clients() == ["b"]
    # The dead gateway's own disconnect, stored late, is the same id: dropped, nothing changes.
    dead.disconnect("a")
    assert ends_per_client(stream) == {"a": ["connect", "disconnect"], "b": ["connect"]}
    assert stream.read(ledger) == []


def test_only_the_expired_epoch_and_the_ones_before_it_are_ended() -> None:
    stream, ledger = Stream(), Ledger(SUBJECTS)
    gw = Gateway(stream, "g1")
    gw.connect("old")
    gw.epoch = 2  # it resumed in time once, then lapsed again
    gw.connect("new")
    expire(stream, "g1", 1)
    stream.read(ledger)
    assert ends_per_client(stream) == {"old": ["connect", "disconnect"], "new": ["connect"]}


def test_a_connect_or_subscribe_stored_after_its_gateway_was_declared_dead_ends_at_once() -> None:
    stream, ledger = Stream(), Ledger(SUBJECTS)
    gw = Gateway(stream, "g1")
    gw.connect("a")
    expire(stream, "g1", 1)
    gw.outbox.subscribed("a", "x")  # in flight when it was declared dead
    gw.connect("late")
    gw.subscribe("late", "x")
    stream.read(ledger)
    assert ends_per_client(stream) == {"a": ["connect", "disconnect"], "late": ["connect", "disconnect"]}
    assert len(stream.of("subscribe")) == len(stream.of("unsubscribe")) == 2
    assert transitions(stream, "x") == []  # a subscriber of a dead gateway occupies nothing
    assert ledger.connection_count() == ledger.subscription_count() == 0


def test_two_replicas_derive_the_same_announcements_and_the_stream_keeps_one_of_each() -> None:
    stream, first, second = Stream(), Ledger(SUBJECTS), Ledger(SUBJECTS)
    gw = Gateway(stream, "g1")
    for n in range(3):
        gw.connect(f"c{n}")
        gw.subscribe(f"c{n}", "x")
    expire(stream, "g1", 1)
    by_first = stream.read(first)
    by_second = stream.read(second)  # reads the first's announcements too: derives the same again
    assert [(a.msg_id, a.event) for a in by_first] == [(a.msg_id, a.event) for a in by_second]
    stream.read(first)
    stream.read(second)
    assert first.pending == second.pending == {}
    assert [c for c, ends in ends_per_client(stream).items() if ends != ["connect", "disconnect"]] == []
    assert transitions(stream, "x") == ["channel_occupied", "channel_vacated"]


def test_a_replica_replaying_old_messages_finds_everything_told_already() -> None:
    stream, live = Stream(), Ledger(SUBJECTS)
    gw = Gateway(stream, "g1")
    gw.connect("a")
    gw.subscribe("a", "x")
    expire(stream, "g1", 1)
    stream.read(live)
    late = Ledger(SUBJECTS)
    stream.read(late, tell=False)  # replaying: nothing told until the end of the stream
    assert late.pending == {}


def test_a_restored_checkpoint_carries_on_as_if_never_stopped() -> None:
    stream, whole = Stream(), Ledger(SUBJECTS)
    gw = Gateway(stream, "g1")
    gw.connect("a")
    gw.subscribe("a", "x")
    gw.connect("b")
    expire(stream, "g9", 1)  # another gateway, unknown here: remembered as dead
    first = Ledger(SUBJECTS)
    stream.read(first, tell=False)  # what is derived stays pending in the checkpoint
    restored = Ledger.restore(SUBJECTS, first.state())
    assert restored.state() == first.state()
    gw.subscribe("b", "x")
    gw.unsubscribe("a", "x")
    gw.unsubscribe("b", "x")
    expire(stream, "g1", 1)
    assert [(a.msg_id, a.event) for a in stream.read(restored, tell=False)] == [
        (a.msg_id, a.event) for a in stream.read(whole, tell=False)[1:]
    ]
    assert restored.pending.keys() == whole.pending.keys()
    assert restored.state() == whole.state()


def test_an_end_stored_before_its_start_keeps_the_start_closed_for_the_memory() -> None:
    stream, ledger = Stream(), Ledger(SUBJECTS, memory_ms=100)
    gw = Gateway(stream, "g1")
    gw.connect("a")
    gw.outbox.subscribed("a", "x")
    subscribe = gw.outbox.peek(1)[0]
    gw.outbox.commit(gw.outbox.generation, 1)
    gw.unsubscribe("a", "x")  # stored first: the subscribe is retried later
    stream.store(subscribe.msg_id, subscribe.event)
    gw.disconnect("a")
    stream.read(ledger)
    assert ledger.subscription_count() == 0
    assert transitions(stream, "x") == []


def test_a_disconnect_ends_what_its_connection_still_held() -> None:
    stream, ledger = Stream(), Ledger(SUBJECTS)
    gw = Gateway(stream, "g1")
    gw.connect("a")
    gw.subscribe("a", "x")
    subscribe = stream.messages[-1][1]
    disconnect = Disconnect(user="u-a", client="a", code=3000, reason="bye")
    # Its unsubscribe went astray.
    stream.store("disconnect:a", Event(gateway="g1", epoch=1, sequence=9, source=Event.GATEWAY, disconnect=disconnect))
    stream.read(ledger)
    [told] = stream.of("unsubscribe")
    assert told.unsubscribe.subscription == subscribe.sequence
    assert told.unsubscribe.code == UnsubscribeCode.DISCONNECT
    assert not told.unsubscribe.gateway_died
    assert transitions(stream, "x") == ["channel_occupied", "channel_vacated"]


def test_applying_twice_or_ending_the_unknown_changes_nothing() -> None:
    stream, ledger = Stream(), Ledger(SUBJECTS)
    gw = Gateway(stream, "g1")
    gw.connect("a")
    gw.subscribe("a", "x")
    stream.read(ledger)
    before = ledger.state()
    msg_id, event = stream.messages[1]
    assert ledger.apply(2, 1002, msg_id, event) == []  # the same message again
    stream.store("connect:a again", stream.messages[0][1])  # a duplicate stored past the window
    stream.store("unsubscribe:g1:77", stream.of("subscribe")[0])  # an end of nothing...
    expire(stream, "nobody", 3)  # ...and a gateway that held nothing
    assert stream.read(ledger) == []
    assert ledger.occupied() == {"x": 1}
    assert ledger.open_clients() == ["a"]
    assert before.connections == ledger.state().connections
