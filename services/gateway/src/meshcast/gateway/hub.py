"""The local hub: which clients of this gateway are in which channel, and fan-out.

One NATS subscription per channel per gateway, made for the channel's first
local subscriber and dropped with its last. A message from NATS is decoded
once, encoded once per client format and framed once; publications that
arrive in the same event-loop turn are batched into one WebSocket message
per format. No task, buffer or copy per client: each subscriber gets the same
frame bytes.

Channels of namespaces with history also carry stream offsets (see
`sequencer`): publications are delivered in offset order, a gap is filled
from history before anything after it is delivered, and a client that joins
is held (its own publications buffered) until the channel's live position
reaches the position its subscribe reply gave it.

One client's failure never reaches another: `Client.write` never raises (a
closing socket is skipped and cleaned up on its own), so every loop over
clients runs to its end, and joiners' buffers are extended before any
client is written to. Should a flush fail anyway (a bug), a history
channel's clients are told to resubscribe and recover rather than left with
a silent hole.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog
from google.protobuf.message import DecodeError
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry.trace import SpanKind
from opentelemetry.util.types import AttributeValue

from meshcast.bus import SKIP_HISTORY_HEADER, Subjects, client_info, subscriptions_applied
from meshcast.common.telemetry import (
    DESTINATION,
    MESSAGING_SYSTEM,
    TRACEPARENT,
    extract,
    sampled,
    tracer,
    tracing_enabled,
)
from meshcast.proto.bus_pb2 import Publication
from meshcast.proto.client_pb2 import Join, Leave, Push, Reply, Unsubscribe
from meshcast.proto.presence_pb2 import PresenceEvent
from meshcast.protocol import Format, UnsubscribeCode, join_pushes, publication_push, ws_frame

from . import metrics
from .sequencer import Item, Sequencer, Verdict

if TYPE_CHECKING:
    from .client import Client

log = structlog.get_logger(__name__)

# Fills a gap: the channel's publications after `offset` (epoch given) and
# the channel's newest offset when they were read, or None when they cannot
# all be had.
GapFiller = Callable[[str, str, int], Awaitable[tuple[list[Item], int] | None]]


class Joiner:
    """A client subscribing to a history channel, held until it can go live."""

    __slots__ = ("buffer", "client", "position", "target")

    def __init__(self, client: Client) -> None:
        self.client = client
        self.buffer: list[Item] = []
        # Set on activation: the offset its reply gave it, and the channel
        # offset the live path must reach before it joins the live clients.
        self.position = 0
        self.target: int | None = None


class _Channel:
    """Local subscribers of one channel, by format, and publications awaiting flush."""

    __slots__ = (
        "by_format",
        "join_leave",
        "joiners",
        "name",
        "pending",
        "presence_subscription",
        "sequencer",
        "subscription",
    )

    def __init__(self, name: str, history: bool) -> None:
        self.name = name
        self.by_format: dict[Format, dict[Client, None]] = {Format.JSON: {}, Format.PROTOBUF: {}}
        self.subscription: Subscription | None = None
        self.presence_subscription: Subscription | None = None
        self.pending: list[Item] = []
        self.sequencer = Sequencer() if history else None
        self.joiners: dict[Client, Joiner] = {}
        # The clients that receive this channel's join and leave pushes.
        self.join_leave: dict[Client, None] = {}

    def __len__(self) -> int:
        return sum(len(c) for c in self.by_format.values()) + len(self.joiners)


# Called when a client leaves a channel, however it leaves: channel, client, why.
LeaveCallback = Callable[[str, "Client", UnsubscribeCode, str], None]


class Hub:
    def __init__(
        self,
        nc: Nats,
        subjects: Subjects,
        fill_gap: GapFiller | None = None,
        on_leave: LeaveCallback | None = None,
    ) -> None:
        self._nc = nc
        self._subjects = subjects
        self._fill_gap = fill_gap
        self._on_leave = on_leave
        self._channels: dict[str, _Channel] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.clients: dict[str, Client] = {}
        self._by_user: dict[str, dict[Client, None]] = {}
        self._loop = asyncio.get_running_loop()

    # Connections.

    def add_client(self, client: Client) -> None:
        self.clients[client.id] = client
        self._by_user.setdefault(client.user, {})[client] = None
        metrics.CONNECTIONS.inc()

    async def remove_client(self, client: Client) -> None:
        if self.clients.pop(client.id, None) is None:
            return
        metrics.CONNECTIONS.dec()
        users = self._by_user.get(client.user)
        if users is not None:
            users.pop(client, None)
            if not users:
                del self._by_user[client.user]
        for channel in list(client.channels):
            await self.unsubscribe(channel, client, UnsubscribeCode.DISCONNECT, "disconnect")

    def clients_of(self, user: str) -> list[Client]:
        return list(self._by_user.get(user, ()))

    # Channels.

    def channel_count(self) -> int:
        return len(self._channels)

    async def _entry(self, channel: str, history: bool, join_leave: bool) -> _Channel:
        entry = self._channels.get(channel)
        if entry is None:
            entry = _Channel(channel, history)
            entry.subscription = await self._nc.subscribe(self._subjects.live(channel), cb=self._make_callback(entry))
            if join_leave:
                entry.presence_subscription = await self._nc.subscribe(
                    self._subjects.presence_events(channel), cb=self._presence_callback(entry)
                )
            # The server has the interest before the client hears "subscribed"
            # (other cluster nodes learn it over routes shortly after).
            await subscriptions_applied(self._nc)
            self._channels[channel] = entry
            metrics.CHANNELS.set(len(self._channels))
        return entry

    async def subscribe(self, channel: str, client: Client, *, join_leave: bool = False) -> None:
        """Add `client` to a channel without history, subscribing on NATS for the first one."""
        async with self._lock(channel):
            entry = await self._entry(channel, history=False, join_leave=join_leave)
            entry.by_format[client.format][client] = None
            client.channels.add(channel)

    async def join(self, channel: str, client: Client, *, join_leave: bool = False) -> Joiner:
        """Start adding `client` to a history channel: from now on its publications are buffered."""
        async with self._lock(channel):
            entry = await self._entry(channel, history=True, join_leave=join_leave)
            joiner = entry.joiners[client] = Joiner(client)
            client.channels.add(channel)
            return joiner

    def activate(self, channel: str, joiner: Joiner, *, position: int, channel_offset: int, epoch: str) -> None:
        """The joiner's subscribe reply is written (it stands at `position`): let it go live
        once the channel's live path has delivered everything up to `channel_offset`."""
        entry = self._channels.get(channel)
        if entry is None or entry.sequencer is None or entry.joiners.get(joiner.client) is not joiner:
            return
        joiner.position = position
        joiner.target = channel_offset
        if entry.sequencer.offset is None:
            # The channel's first position comes from this joiner's read; what arrived before
            # it is passed over, yet a joiner whose own read stopped earlier still needs it.
            early = entry.sequencer.held_until(channel_offset)
            for other in entry.joiners.values():
                other.buffer.extend(early)
        verdict = entry.sequencer.start(channel_offset, epoch)
        self._apply(entry, verdict)
        self._admit_ready(entry)

    async def unsubscribe(
        self, channel: str, client: Client, code: UnsubscribeCode = UnsubscribeCode.CLIENT, reason: str = ""
    ) -> None:
        """Remove `client` from `channel` (`code` and `reason` say why); drop the NATS
        subscription with the last one."""
        if channel in client.channels:
            self._left(channel, client, code, reason)
        client.forget(channel)
        async with self._lock(channel):
            entry = self._channels.get(channel)
            if entry is None:
                return
            entry.by_format[client.format].pop(client, None)
            entry.joiners.pop(client, None)
            entry.join_leave.pop(client, None)
            if len(entry):
                return
            await self._drop(entry)
        self._locks.pop(channel, None)

    async def _drop(self, entry: _Channel) -> None:
        if self._channels.get(entry.name) is entry:
            del self._channels[entry.name]
        metrics.CHANNELS.set(len(self._channels))
        for sub in (entry.subscription, entry.presence_subscription):
            if sub is not None and not self._nc.is_closed:
                await sub.unsubscribe()

    def _left(self, channel: str, client: Client, code: UnsubscribeCode, reason: str) -> None:
        """Tell the leave callback; its failure is logged, never passed to the caller's loop."""
        if self._on_leave is None:
            return
        try:
            self._on_leave(channel, client, code, reason)
        except Exception:
            log.exception("leave callback failed", channel=channel, client=client.id)

    def _lock(self, channel: str) -> asyncio.Lock:
        lock = self._locks.get(channel)
        if lock is None:
            lock = self._locks[channel] = asyncio.Lock()
        return lock

    # Fan-out.

    def _make_callback(self, entry: _Channel) -> Callable[[Msg], Awaitable[None]]:
        async def on_message(msg: Msg) -> None:
            pub = Publication()
            try:
                pub.ParseFromString(msg.data)
            except DecodeError:
                metrics.BAD_BUS_MESSAGES.inc()
                log.warning("bad publication on bus", subject=msg.subject)
                return
            headers = msg.headers
            if headers and TRACEPARENT in headers and tracing_enabled() and sampled(headers[TRACEPARENT]):
                _trace_delivery(entry, headers)
            if not entry.pending:
                self._loop.call_soon(self._flush, entry)
            if entry.sequencer is None:
                entry.pending.append(Item(0, 0, pub))
                return
            if not headers or "Nats-Sequence" not in headers:
                if headers and SKIP_HISTORY_HEADER in headers:
                    entry.pending.append(Item(0, 0, pub))  # no offset: delivered as it comes
                    return
                metrics.BAD_BUS_MESSAGES.inc()
                log.warning("publication without stream offset on a history channel", subject=msg.subject)
                return
            seq = int(headers["Nats-Sequence"])
            # JetStream's previous sequence on the channel's subject is 0 for its first message.
            last = headers.get("Nats-Last-Sequence")
            entry.pending.append(Item(seq, int(last or "0"), pub, first=last == "0"))

        return on_message

    def _presence_callback(self, entry: _Channel) -> Callable[[Msg], Awaitable[None]]:
        async def on_event(msg: Msg) -> None:
            event = PresenceEvent()
            try:
                event.ParseFromString(msg.data)
            except DecodeError:
                return
            self._push_join_leave(entry, event)

        return on_event

    def _push_join_leave(self, entry: _Channel, event: PresenceEvent) -> None:
        """A join or leave to the channel's local subscribers that asked for them."""
        info = client_info(event.info)
        if event.kind == PresenceEvent.JOIN:
            push = Push(channel=entry.name, join=Join(info=info))
        elif event.kind == PresenceEvent.LEAVE:
            push = Push(channel=entry.name, leave=Leave(info=info))
        else:
            return
        reply = Reply(push=push)
        frames: dict[Format, bytes] = {}
        for client in entry.join_leave:
            frame = frames.get(client.format)
            if frame is None:
                frame = frames[client.format] = ws_frame(client.session.encode(reply), client.format.binary)
            client.write(frame)

    def want_join_leave(self, channel: str, client: Client) -> None:
        """From now on `client` receives the channel's join and leave pushes."""
        entry = self._channels.get(channel)
        if entry is not None and channel in client.channels:
            entry.join_leave[client] = None

    def suspect(self) -> None:
        """The NATS connection went away: every history channel may have missed messages."""
        for entry in self._channels.values():
            if entry.sequencer is not None:
                entry.sequencer.suspect()

    def resync(self) -> None:
        """The NATS connection is back: every suspect history channel asks history now."""
        for entry in list(self._channels.values()):
            if entry.sequencer is not None:
                self._apply(entry, entry.sequencer.resync())

    def _flush(self, entry: _Channel) -> None:
        items, entry.pending = entry.pending, []
        try:
            if entry.sequencer is not None:
                items = self._sequence(entry, items)
            if items:
                self._deliver(entry, items)
                _observe_latency(items[0].pub)
            if entry.joiners:
                self._admit_ready(entry)
        except Exception:
            metrics.FANOUT_FAILURES.inc()
            log.exception("fan-out failed", channel=entry.name)
            if entry.sequencer is not None and self._channels.get(entry.name) is entry:
                self._fail(entry, "fan-out failed")

    def _sequence(self, entry: _Channel, items: list[Item]) -> list[Item]:
        sequencer = entry.sequencer
        assert sequencer is not None
        ready: list[Item] = []
        for item in items:
            if not item.seq:  # skipped history: outside the stream's order
                ready.append(item)
                continue
            verdict = sequencer.push(item)
            if verdict.reset:
                self._fail(entry, "stream reset")
                return []
            ready.extend(verdict.ready)
            if verdict.gap_after is not None:
                self._spawn(self._fill(entry, verdict.gap_after))
        return ready

    def _apply(self, entry: _Channel, verdict: Verdict) -> None:
        """Act on a verdict outside the flush: deliver, fill, or give up."""
        if verdict.reset:
            self._fail(entry, "stream reset")
            return
        if verdict.ready:
            self._deliver(entry, verdict.ready)
        if verdict.gap_after is not None:
            self._spawn(self._fill(entry, verdict.gap_after))

    def _deliver(self, entry: _Channel, items: list[Item]) -> None:
        for joiner in entry.joiners.values():
            joiner.buffer.extend(items)
        delivered = 0
        for fmt, clients in entry.by_format.items():
            if not clients:
                continue
            pushes = [_encode(fmt, entry, item) for item in items]
            frame = ws_frame(join_pushes(fmt, pushes), fmt.binary)
            # Client.write neither raises nor changes these dicts: a closing
            # or slow client's removal happens later, in its connection task.
            for client in clients:
                client.write(frame)
            delivered += len(clients)
        metrics.DELIVERIES.inc(delivered * len(items))
        metrics.BUS_MESSAGES.inc(len(items))

    def _admit_ready(self, entry: _Channel) -> None:
        """Move joiners whose target the live path has reached into the live clients."""
        sequencer = entry.sequencer
        if sequencer is None or sequencer.offset is None:
            return
        for client, joiner in list(entry.joiners.items()):
            if joiner.target is None or joiner.target > sequencer.offset:
                continue
            del entry.joiners[client]
            missed = [item for item in joiner.buffer if item.seq > joiner.position]
            if missed:
                pushes = [_encode(client.format, entry, item) for item in missed]
                client.write(ws_frame(join_pushes(client.format, pushes), client.format.binary))
            entry.by_format[client.format][client] = None

    async def _fill(self, entry: _Channel, after: int) -> None:
        sequencer = entry.sequencer
        assert sequencer is not None
        assert self._fill_gap is not None
        metrics.GAPS.inc()
        filled = await self._fill_gap(entry.name, sequencer.epoch, after)
        if self._channels.get(entry.name) is not entry:
            return
        if filled is None:
            self._fail(entry, "gap not fillable")
            return
        items, known_until = filled
        verdict = sequencer.filled(items, known_until)
        if verdict.gap_after is not None and verdict.gap_after <= after:
            # History answered but the live path still points past it: give up
            # rather than ask again for what history does not have.
            self._fail(entry, "gap persists after fill")
            return
        self._apply(entry, verdict)
        self._admit_ready(entry)

    def _fail(self, entry: _Channel, why: str) -> None:
        """The channel's state is lost here: its clients resubscribe and recover from history."""
        log.warning("channel state lost", channel=entry.name, reason=why)
        metrics.INSUFFICIENT_STATE.inc()
        clients = [c for by in entry.by_format.values() for c in by] + list(entry.joiners)
        entry.by_format = {Format.JSON: {}, Format.PROTOBUF: {}}
        entry.joiners.clear()
        entry.join_leave.clear()
        for client in clients:
            self._left(entry.name, client, UnsubscribeCode.INSUFFICIENT_STATE, "insufficient state")
            client.forget(entry.name)
            _push_unsubscribe(client, entry.name, UnsubscribeCode.INSUFFICIENT_STATE, "insufficient state")
        self._spawn(self._drop(entry))

    async def kick(self, channel: str, client: Client, code: UnsubscribeCode, reason: str) -> None:
        """Unsubscribe `client` on the server's initiative and tell it why."""
        if channel not in client.channels:
            return
        await self.unsubscribe(channel, client, code, reason)
        _push_unsubscribe(client, channel, code, reason)

    def kick_later(self, channel: str, client: Client, code: UnsubscribeCode, reason: str) -> None:
        self._spawn(self.kick(channel, client, code, reason))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _observe_latency(oldest: Publication) -> None:
    """Publish-to-delivery latency of a delivered batch, from its oldest publication:
    one observation per batch, never per receiver."""
    if oldest.time_ms:
        metrics.DELIVERY_LATENCY.observe(max(0.0, time.time() - oldest.time_ms / 1000))


def _trace_delivery(entry: _Channel, headers: dict[str, str]) -> None:
    """A span for a traced publication reaching this gateway, child of its publish: one
    per channel and message, never per receiver (it counts them, from the format maps)."""
    clients = sum(len(c) for c in entry.by_format.values())
    attributes: dict[str, AttributeValue] = {
        DESTINATION: entry.name,
        MESSAGING_SYSTEM: "nats",
        "meshcast.local_subscribers": clients,
    }
    tracer.start_span("meshcast.deliver", context=extract(headers), kind=SpanKind.CONSUMER, attributes=attributes).end()


def _encode(fmt: Format, entry: _Channel, item: Item) -> bytes:
    pub = item.pub
    info = client_info(pub.info) if pub.HasField("info") else None
    tags = dict(pub.tags) if pub.tags else None
    # The epoch goes with the channel's first publication only (Centrifugo: with offset 1).
    epoch = entry.sequencer.epoch if item.first and entry.sequencer is not None else ""
    return publication_push(fmt, entry.name, pub.data, info=info, offset=item.seq, tags=tags, epoch=epoch)


def _push_unsubscribe(client: Client, channel: str, code: UnsubscribeCode, reason: str) -> None:
    push = Reply(push=Push(channel=channel, unsubscribe=Unsubscribe(code=int(code), reason=reason)))
    client.write(ws_frame(client.session.encode(push), client.format.binary))
