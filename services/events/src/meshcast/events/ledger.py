"""What the events stream says is open, derived from the stream alone (no I/O).

`Ledger.apply` takes the stream's messages in stream order. It keeps the open
connections and subscriptions (by gateway), every channel's subscriber count
across the cluster, and the gateway epochs presence declared dead. From them
it derives what must be announced:

- ``channel_occupied`` when a channel's count goes from 0 to 1 and
  ``channel_vacated`` when it goes back to 0, each transition once;
- for ``gateway_expired`` (gateway G, epoch n): an ``unsubscribe`` for every
  open subscription and then a ``disconnect`` for every open connection of G
  from epoch n or before, with ``gateway_died`` set; and the same at once for
  a connect or subscribe of such an epoch that is stored later (it was in
  flight when G was declared dead). A subscription opened and ended that way
  changes no count;
- at a disconnect, an ``unsubscribe`` for any subscription of the connection
  still open (the gateway sends them before its disconnect; this keeps every
  subscribe paired even if one went astray).

Every announcement's ``Nats-Msg-Id`` is a function of the stream:
``disconnect:<client>`` and ``unsubscribe:<gateway>:<n>`` (n: the subscribe's
sequence) are the ids the gateway itself uses, so a disconnect told by both
the gateway and for it is stored once; the transitions are
``channel_occupied|channel_vacated:<cause seq>:<channel token>``. Every
replica of the events service therefore derives the same announcements with
the same ids, and the stream keeps one of each.

An announcement stays `pending` until the ledger sees it (or the gateway's
event of the same id) in the stream: a replica that restarts from a
checkpoint knows what it still owes, and one that replays old messages
learns what was told already before it tells anything (see ``app``).

Ends seen before their starts (a retry stored late) are remembered for
`memory_ms` of stream time so the late start is not opened; so are dead
epochs, for stragglers of their gateway. Idempotent throughout: a message
applied twice, a second connect or a second disconnect of a client, an end of
something never opened, change nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from meshcast.bus import Subjects, encode_token
from meshcast.proto.events_ledger_pb2 import (
    Announcement as AnnouncementProto,
)
from meshcast.proto.events_ledger_pb2 import (
    DeadGateway,
    Ended,
    LedgerState,
    OpenConnection,
    OpenSubscription,
)
from meshcast.proto.events_pb2 import (
    ChannelOccupied,
    ChannelVacated,
    Disconnect,
    Event,
    Unsubscribe,
)
from meshcast.protocol import DisconnectCode, UnsubscribeCode

GATEWAY_DIED = "gateway died"
# What a dead gateway's connections are closed with in their disconnect event.
DIED_CODE = DisconnectCode.CONNECTION_CLOSED

SubscriptionKey = tuple[str, int]  # (gateway, sequence of the subscribe)


@dataclass(frozen=True, slots=True)
class Announcement:
    """An event the events service publishes, with its deterministic id."""

    subject: str
    msg_id: str
    event: Event
    # Stream time (ms) of the message it follows from.
    cause_time_ms: int


@dataclass(slots=True)
class _Connection:
    client: str
    user: str
    gateway: str
    epoch: int
    time_ms: int
    subscriptions: dict[SubscriptionKey, None] = field(default_factory=dict)


@dataclass(slots=True)
class _Subscription:
    gateway: str
    subscription: int
    client: str
    user: str
    channel: str
    epoch: int

    @property
    def key(self) -> SubscriptionKey:
        return (self.gateway, self.subscription)


@dataclass(slots=True)
class _Gateway:
    """What one gateway holds open."""

    connections: dict[str, _Connection] = field(default_factory=dict)
    subscriptions: dict[SubscriptionKey, _Subscription] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Dead:
    epoch: int
    time_ms: int
    seq: int


def unsubscribe_id(gateway: str, subscription: int) -> str:
    return f"unsubscribe:{gateway}:{subscription}"


def disconnect_id(client: str) -> str:
    return f"disconnect:{client}"


class Ledger:
    def __init__(self, subjects: Subjects, *, memory_ms: int = 3_600_000) -> None:
        self._subjects = subjects
        self._memory_ms = memory_ms
        self.seq = 0
        self.time_ms = 0
        self._connections: dict[str, _Connection] = {}
        self._subscriptions: dict[SubscriptionKey, _Subscription] = {}
        self._gateways: dict[str, _Gateway] = {}
        self._counts: dict[str, int] = {}
        self._dead: dict[str, _Dead] = {}
        # Insertion order is stream order: the oldest first.
        self._ended: OrderedDict[str, int] = OrderedDict()
        self.pending: dict[str, Announcement] = {}
        # Where the message being applied stands: the cause of what it derives.
        self._cause = 0
        self._cause_ms = 0

    # Queries.

    def connection_count(self) -> int:
        return len(self._connections)

    def subscription_count(self) -> int:
        return len(self._subscriptions)

    def occupied(self) -> dict[str, int]:
        """Subscriber count of every occupied channel."""
        return dict(self._counts)

    def open_clients(self, gateway: str | None = None) -> list[str]:
        if gateway is None:
            return list(self._connections)
        gw = self._gateways.get(gateway)
        return list(gw.connections) if gw is not None else []

    # Applying the stream.

    def apply(self, seq: int, time_ms: int, msg_id: str, event: Event) -> list[Announcement]:
        """Apply stream message `seq` (stored at `time_ms`, carrying `msg_id`); what it
        newly calls for (also added to `pending`)."""
        if seq <= self.seq:
            return []
        self.seq = seq
        self.time_ms = max(self.time_ms, time_ms)
        self._cause, self._cause_ms = seq, time_ms
        self.pending.pop(msg_id, None)
        out: list[Announcement] = []
        kind = event.WhichOneof("kind")
        if kind == "connect":
            self._connect(event, out)
        elif kind == "disconnect":
            self._disconnect(event, out)
        elif kind == "subscribe":
            self._subscribe(event, out)
        elif kind == "unsubscribe":
            self._unsubscribe(event, out)
        elif kind == "gateway_expired":
            self._gateway_expired(event, out)
        self._forget(self.time_ms)
        for announcement in out:
            self.pending[announcement.msg_id] = announcement
        return out

    def _connect(self, event: Event, out: list[Announcement]) -> None:
        msg = event.connect
        if msg.client in self._connections or disconnect_id(msg.client) in self._ended:
            return
        conn = _Connection(msg.client, msg.user, event.gateway, event.epoch, event.time_ms)
        self._connections[conn.client] = conn
        self._gateway(conn.gateway).connections[conn.client] = conn
        dead = self._dead_for(event.gateway, event.epoch)
        if dead is not None:
            self._end_connection(conn, dead, out)

    def _disconnect(self, event: Event, out: list[Announcement]) -> None:
        client = event.disconnect.client
        conn = self._connections.get(client)
        if conn is None:
            self._ended[disconnect_id(client)] = self._cause_ms
            return
        for key in list(conn.subscriptions):
            sub = self._subscriptions.get(key)
            if sub is not None:
                self._end_subscription(sub, UnsubscribeCode.DISCONNECT, "disconnect", out, died=False)
        self._drop_connection(conn)

    def _subscribe(self, event: Event, out: list[Announcement]) -> None:
        msg = event.subscribe
        key = (event.gateway, event.sequence)
        if key in self._subscriptions or unsubscribe_id(*key) in self._ended:
            return
        sub = _Subscription(event.gateway, event.sequence, msg.client, msg.user, msg.channel, event.epoch)
        self._subscriptions[key] = sub
        self._gateway(sub.gateway).subscriptions[key] = sub
        conn = self._connections.get(sub.client)
        if conn is not None:
            conn.subscriptions[key] = None
        if self._dead_for(event.gateway, event.epoch) is not None:
            # Opened on a gateway already declared dead: ended at once, no count changes.
            self._drop_subscription(sub)
            out.append(self._unsubscribe_of(sub, UnsubscribeCode.DISCONNECT, GATEWAY_DIED, died=True))
            return
        count = self._counts.get(sub.channel, 0) + 1
        self._counts[sub.channel] = count
        if count == 1:
            out.append(self._transition("channel_occupied", sub.channel))

    def _unsubscribe(self, event: Event, out: list[Announcement]) -> None:
        key = (event.gateway, event.unsubscribe.subscription)
        sub = self._subscriptions.get(key)
        if sub is None:
            self._ended[unsubscribe_id(*key)] = self._cause_ms
            return
        self._drop_subscription(sub)
        self._uncount(sub.channel, out)

    def _gateway_expired(self, event: Event, out: list[Announcement]) -> None:
        gateway, epoch = event.gateway, event.epoch
        known = self._dead.get(gateway)
        if known is None or known.epoch < epoch:
            self._dead[gateway] = _Dead(epoch, event.time_ms, self._cause)
        dead = self._dead[gateway]
        gw = self._gateways.get(gateway)
        if gw is None:
            return
        for conn in [c for c in gw.connections.values() if c.epoch <= epoch]:
            self._end_connection(conn, dead, out)
        for sub in [s for s in gw.subscriptions.values() if s.epoch <= epoch]:
            self._end_subscription(sub, UnsubscribeCode.DISCONNECT, GATEWAY_DIED, out, died=True)

    # Ending things.

    def _end_connection(self, conn: _Connection, dead: _Dead, out: list[Announcement]) -> None:
        """A connection of a dead gateway: its unsubscribes, then its disconnect."""
        for key in list(conn.subscriptions):
            sub = self._subscriptions.get(key)
            if sub is not None:
                self._end_subscription(sub, UnsubscribeCode.DISCONNECT, GATEWAY_DIED, out, died=True)
        self._drop_connection(conn)
        event = self._derived(conn.gateway, conn.epoch, dead.time_ms)
        event.disconnect.CopyFrom(
            Disconnect(
                user=conn.user,
                client=conn.client,
                code=int(DIED_CODE),
                reason=GATEWAY_DIED,
                duration_ms=max(0, dead.time_ms - conn.time_ms),
                gateway_died=True,
            )
        )
        out.append(Announcement(self._subjects.event("disconnect"), disconnect_id(conn.client), event, self._cause_ms))

    def _end_subscription(
        self, sub: _Subscription, code: UnsubscribeCode, reason: str, out: list[Announcement], *, died: bool
    ) -> None:
        self._drop_subscription(sub)
        out.append(self._unsubscribe_of(sub, code, reason, died=died))
        self._uncount(sub.channel, out)

    def _unsubscribe_of(self, sub: _Subscription, code: UnsubscribeCode, reason: str, *, died: bool) -> Announcement:
        event = self._derived(sub.gateway, sub.epoch, self._cause_time())
        event.unsubscribe.CopyFrom(
            Unsubscribe(
                user=sub.user,
                client=sub.client,
                channel=sub.channel,
                code=int(code),
                reason=reason,
                subscription=sub.subscription,
                gateway_died=died,
            )
        )
        subject = self._subjects.event("unsubscribe", sub.channel)
        return Announcement(subject, unsubscribe_id(*sub.key), event, self._cause_ms)

    def _uncount(self, channel: str, out: list[Announcement]) -> None:
        count = self._counts.get(channel, 0) - 1
        if count > 0:
            self._counts[channel] = count
            return
        self._counts.pop(channel, None)
        if count == 0:
            out.append(self._transition("channel_vacated", channel))

    def _transition(self, kind: str, channel: str) -> Announcement:
        event = self._derived("", 0, self._cause_time())
        if kind == "channel_occupied":
            event.channel_occupied.CopyFrom(ChannelOccupied(channel=channel))
        else:
            event.channel_vacated.CopyFrom(ChannelVacated(channel=channel))
        msg_id = f"{kind}:{self._cause}:{encode_token(channel)}"
        return Announcement(self._subjects.event(kind, channel), msg_id, event, self._cause_ms)

    def _derived(self, gateway: str, epoch: int, time_ms: int) -> Event:
        return Event(time_ms=time_ms, gateway=gateway, epoch=epoch, source=Event.EVENTS, cause=self._cause)

    def _cause_time(self) -> int:
        return self._cause_ms

    # Bookkeeping.

    def _gateway(self, gateway: str) -> _Gateway:
        gw = self._gateways.get(gateway)
        if gw is None:
            gw = self._gateways[gateway] = _Gateway()
        return gw

    def _dead_for(self, gateway: str, epoch: int) -> _Dead | None:
        dead = self._dead.get(gateway)
        return dead if dead is not None and epoch <= dead.epoch else None

    def _drop_connection(self, conn: _Connection) -> None:
        self._connections.pop(conn.client, None)
        gw = self._gateways.get(conn.gateway)
        if gw is not None:
            gw.connections.pop(conn.client, None)
            if not gw.connections and not gw.subscriptions:
                del self._gateways[conn.gateway]

    def _drop_subscription(self, sub: _Subscription) -> None:
        key = sub.key
        self._subscriptions.pop(key, None)
        conn = self._connections.get(sub.client)
        if conn is not None:
            conn.subscriptions.pop(key, None)
        gw = self._gateways.get(sub.gateway)
        if gw is not None:
            gw.subscriptions.pop(key, None)
            if not gw.connections and not gw.subscriptions:
                del self._gateways[sub.gateway]

    def _forget(self, now_ms: int) -> None:
        """Drop tombstones and dead epochs older than the memory (in stream time)."""
        horizon = now_ms - self._memory_ms
        while self._ended and next(iter(self._ended.values())) < horizon:
            self._ended.popitem(last=False)
        if self._dead and any(d.time_ms < horizon for d in self._dead.values()):
            self._dead = {g: d for g, d in self._dead.items() if d.time_ms >= horizon}

    # Checkpoints.

    def state(self) -> LedgerState:
        """Everything needed to carry on after `seq` (see `restore`)."""
        return LedgerState(
            seq=self.seq,
            time_ms=self.time_ms,
            connections=[
                OpenConnection(client=c.client, user=c.user, gateway=c.gateway, epoch=c.epoch, time_ms=c.time_ms)
                for c in self._connections.values()
            ],
            subscriptions=[
                OpenSubscription(
                    gateway=s.gateway,
                    subscription=s.subscription,
                    client=s.client,
                    user=s.user,
                    channel=s.channel,
                    epoch=s.epoch,
                )
                for s in self._subscriptions.values()
            ],
            dead=[DeadGateway(gateway=g, epoch=d.epoch, time_ms=d.time_ms, seq=d.seq) for g, d in self._dead.items()],
            ended=[Ended(msg_id=k, time_ms=t) for k, t in self._ended.items()],
            pending=[
                AnnouncementProto(subject=a.subject, msg_id=a.msg_id, event=a.event, cause_time_ms=a.cause_time_ms)
                for a in self.pending.values()
            ],
        )

    @classmethod
    def restore(cls, subjects: Subjects, state: LedgerState, *, memory_ms: int = 3_600_000) -> Ledger:
        """The ledger `state` describes, in the order it was taken in."""
        ledger = cls(subjects, memory_ms=memory_ms)
        ledger.seq, ledger.time_ms = state.seq, state.time_ms
        for c in state.connections:
            conn = _Connection(c.client, c.user, c.gateway, c.epoch, c.time_ms)
            ledger._connections[conn.client] = conn
            ledger._gateway(conn.gateway).connections[conn.client] = conn
        for s in state.subscriptions:
            sub = _Subscription(s.gateway, s.subscription, s.client, s.user, s.channel, s.epoch)
            ledger._subscriptions[sub.key] = sub
            ledger._gateway(sub.gateway).subscriptions[sub.key] = sub
            owner = ledger._connections.get(sub.client)
            if owner is not None:
                owner.subscriptions[sub.key] = None
            ledger._counts[sub.channel] = ledger._counts.get(sub.channel, 0) + 1
        ledger._dead = {d.gateway: _Dead(d.epoch, d.time_ms, d.seq) for d in state.dead}
        ledger._ended = OrderedDict((e.msg_id, e.time_ms) for e in state.ended)
        for a in state.pending:
            event = Event()
            event.CopyFrom(a.event)
            ledger.pending[a.msg_id] = Announcement(a.subject, a.msg_id, event, a.cause_time_ms)
        return ledger
