"""This gateway's lifecycle events (connect, disconnect, subscribe, unsubscribe,
publication) on their way to the events stream.

The hooks (`EventOutbox.connected` ...) are plain calls: they build the
event, queue it and return; nothing on a connection's path or the fan-out's
waits for the stream. One task (`EventPublisher`) sends the queue in order,
a batch at a time, each event with a deterministic ``Nats-Msg-Id``
(``connect:<client>``, ``disconnect:<client>``,
``subscribe|unsubscribe:<gateway>:<n>`` with ``n`` the subscribe's
sequence, ``publication:<gateway>:<n>``), retried with the same ids until
stored: a retry, or the events service announcing the same disconnect for
this gateway, is stored once.

Pairs: an end (unsubscribe, disconnect) is queued for exactly the starts
(subscribe, connect) that were queued, so every start in the stream gets one
end. The queue holds at most `limit` events; when it is full a new start or
publication is dropped (counted, logged, and visible as a gap in the
events' `sequence`), and so is everything that would follow from it, but
an end is always taken, its start being queued: ends are bounded by the
connections and subscriptions this gateway holds.

Epochs (see `presence`): while this gateway's presence epoch is in doubt (a
lapse: nothing sent for two heartbeat intervals, NATS down) nothing is sent.
When presence says the epoch expired, presence has declared this gateway
dead and the events service announces every connection and subscription it
knew of as ended (`gateway died`): the gateway then drops what it had queued
and forgets every connection (`expired`), and the app closes them, so none
of their ends is told twice.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from google.protobuf.message import Message
from nats.aio.client import Client as Nats
from nats.js.errors import APIError

from meshcast.bus import Subjects
from meshcast.bus.retry import unavailable
from meshcast.bus.subjects import GATEWAY_EVENT_KINDS
from meshcast.bus.writer import Outgoing, StreamWriter
from meshcast.proto.events_pb2 import Connect, Disconnect, Event, Publication, Subscribe, Unsubscribe
from meshcast.protocol import UnsubscribeCode

from . import metrics

log = structlog.get_logger(__name__)

# How often a full queue is logged again (the metric counts every event).
DROP_LOG_INTERVAL = 10.0
# Channel event subjects kept escaped (cleared when it grows past this).
SUBJECT_CACHE = 10_000
FIRST_RETRY_DELAY = 0.05
MAX_RETRY_DELAY = 1.0
# How long a stop waits for the cancelled publisher and its writer (seconds).
STOP_GRACE = 2.0


@dataclass(slots=True)
class _Connection:
    """A connection whose connect was queued: what its ends need."""

    user: str
    connected_ms: int
    # Channel -> the sequence of its subscribe event.
    subscriptions: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Queued:
    subject: str
    msg_id: str
    event: Event


class EventOutbox:
    """What this gateway owes the events stream, in order (no I/O)."""

    def __init__(
        self,
        gateway: str,
        subjects: Subjects,
        *,
        limit: int,
        epoch: Callable[[], int],
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gateway = gateway
        self._subjects = subjects
        self._limit = limit
        self._epoch = epoch
        self._clock_ms = clock_ms
        self._monotonic = monotonic
        self._queue: deque[Queued] = deque()
        self._connections: dict[str, _Connection] = {}
        self._sequence = itertools.count(1)
        # Bumped when the queue is dropped: a batch in flight then is not committed.
        self.generation = 0
        self.dropped = 0
        self._dropped_logged = 0
        self._drop_logged_at = -DROP_LOG_INTERVAL
        self.wake = asyncio.Event()
        # Events queued by kind since the publisher last told the metrics (a counter's
        # inc takes a lock: once per batch, not once per event).
        self.tally: dict[str, int] = dict.fromkeys(GATEWAY_EVENT_KINDS, 0)
        self._channel_subjects: dict[tuple[str, str], str] = {}
        self._connect_subject = subjects.event("connect")
        self._disconnect_subject = subjects.event("disconnect")

    def __len__(self) -> int:
        return len(self._queue)

    # Hooks: never raise, never wait.

    def connected(
        self,
        client: str,
        user: str,
        conn_info: bytes,
        *,
        protocol: str,
        remote_addr: str = "",
        name: str = "",
        version: str = "",
    ) -> None:
        sequence = next(self._sequence)
        if not self._room("connect"):
            return
        now = self._clock_ms()
        self._connections[client] = _Connection(user, now)
        connect = Connect(
            user=user,
            client=client,
            conn_info=conn_info,
            transport="websocket",
            protocol=protocol,
            remote_addr=remote_addr,
            name=name,
            version=version,
        )
        self._put("connect", self._connect_subject, f"connect:{client}", self._event(sequence, now, connect=connect))

    def subscribed(self, client: str, channel: str, chan_info: bytes = b"") -> None:
        conn = self._connections.get(client)
        if conn is None or channel in conn.subscriptions:
            return  # its connect was not queued: neither is anything of it
        sequence = next(self._sequence)
        if not self._room("subscribe"):
            return
        conn.subscriptions[channel] = sequence
        subscribe = Subscribe(user=conn.user, client=client, channel=channel, chan_info=chan_info)
        self._put(
            "subscribe",
            self._subject("subscribe", channel),
            f"subscribe:{self.gateway}:{sequence}",
            self._event(sequence, subscribe=subscribe),
        )

    def unsubscribed(self, client: str, channel: str, code: int, reason: str = "") -> None:
        conn = self._connections.get(client)
        if conn is None:
            return
        subscription = conn.subscriptions.pop(channel, None)
        if subscription is not None:
            self._unsubscribe(client, conn, channel, subscription, code, reason)

    def disconnected(self, client: str, code: int, reason: str) -> None:
        conn = self._connections.pop(client, None)
        if conn is None:
            return
        for channel, subscription in conn.subscriptions.items():
            self._unsubscribe(client, conn, channel, subscription, UnsubscribeCode.DISCONNECT, "disconnect")
        now = self._clock_ms()
        disconnect = Disconnect(
            user=conn.user, client=client, code=code, reason=reason, duration_ms=max(0, now - conn.connected_ms)
        )
        event = self._event(next(self._sequence), now, disconnect=disconnect)
        self._put("disconnect", self._disconnect_subject, f"disconnect:{client}", event)

    def published(self, client: str, user: str, channel: str, data: bytes) -> None:
        sequence = next(self._sequence)
        if not self._room("publication"):
            return
        event = self._event(sequence, publication=Publication(user=user, client=client, channel=channel, data=data))
        self._put("publication", self._subject("publication", channel), f"publication:{self.gateway}:{sequence}", event)

    def expired(self) -> int:
        """This gateway was declared dead: its ends were announced for it. Drop the
        queue and forget every connection; the number of events dropped."""
        dropped = len(self._queue)
        self._queue.clear()
        self._connections.clear()
        self.generation += 1
        if dropped:
            metrics.EVENTS_DROPPED.labels("expired").inc(dropped)
        metrics.EVENTS_QUEUED.set(0)
        return dropped

    # The publisher's side.

    def count(self) -> None:
        """Tell the metrics what was queued since the last time."""
        for kind, n in self.tally.items():
            if n:
                metrics.EVENTS.labels(kind).inc(n)
                self.tally[kind] = 0

    def peek(self, n: int) -> list[Queued]:
        return list(itertools.islice(self._queue, n))

    def commit(self, generation: int, stored: int) -> None:
        """The first `stored` of what `peek` gave (at `generation`) are in the stream."""
        if generation == self.generation:  # else dropped meanwhile
            for _ in range(min(stored, len(self._queue))):
                self._queue.popleft()
            metrics.EVENTS_STORED.inc(stored)
        metrics.EVENTS_QUEUED.set(len(self._queue))

    def refuse_first(self, generation: int) -> None:
        """The stream refused the first queued event for good: drop it."""
        if generation == self.generation and self._queue:
            self._queue.popleft()
            metrics.EVENTS_DROPPED.labels("refused").inc()

    # Internals.

    def _room(self, kind: str) -> bool:
        """Whether a start (or publication) may be queued; counts and logs it if not."""
        if len(self._queue) < self._limit:
            return True
        self.dropped += 1
        metrics.EVENTS_DROPPED.labels("queue_full").inc()
        now = self._monotonic()
        if now - self._drop_logged_at >= DROP_LOG_INTERVAL:
            log.warning(
                "events queue full: events dropped",
                kind=kind,
                dropped=self.dropped - self._dropped_logged,
                limit=self._limit,
            )
            self._drop_logged_at, self._dropped_logged = now, self.dropped
        return False

    def _unsubscribe(
        self, client: str, conn: _Connection, channel: str, subscription: int, code: int, reason: str
    ) -> None:
        unsubscribe = Unsubscribe(
            user=conn.user, client=client, channel=channel, code=code, reason=reason, subscription=subscription
        )
        self._put(
            "unsubscribe",
            self._subject("unsubscribe", channel),
            f"unsubscribe:{self.gateway}:{subscription}",
            self._event(next(self._sequence), unsubscribe=unsubscribe),
        )

    def _subject(self, kind: str, channel: str) -> str:
        key = (kind, channel)
        subject = self._channel_subjects.get(key)
        if subject is None:
            if len(self._channel_subjects) >= SUBJECT_CACHE:
                self._channel_subjects.clear()
            subject = self._channel_subjects[key] = self._subjects.event(kind, channel)
        return subject

    def _event(self, sequence: int, now: int | None = None, **kind: Message) -> Event:
        return Event(
            time_ms=self._clock_ms() if now is None else now,
            gateway=self.gateway,
            epoch=self._epoch(),
            source=Event.GATEWAY,
            sequence=sequence,
            **kind,  # type: ignore[arg-type]
        )

    def _put(self, kind: str, subject: str, msg_id: str, event: Event) -> None:
        """Queue one event (the queue gauge follows the publisher's commits)."""
        self._queue.append(Queued(subject, msg_id, event))
        self.tally[kind] += 1
        self.wake.set()


class EventPublisher:
    """The one task that sends the outbox to the stream, in order, retrying until stored."""

    def __init__(
        self,
        nc: Nats,
        outbox: EventOutbox,
        *,
        standing: Callable[[], bool],
        batch: int,
        ack_timeout: float,
    ) -> None:
        self._nc = nc
        self._outbox = outbox
        self._standing = standing
        self._batch = batch
        self._ack_timeout = ack_timeout
        self._writer = StreamWriter(nc)
        self._task: asyncio.Task[None] | None = None
        # Whether the last write stored everything it sent (a stop waits only then).
        self._flowing = True

    async def start(self) -> None:
        await self._writer.start()
        self._task = asyncio.create_task(self._run())

    async def stop(self, wait: float) -> None:
        """Send what is queued (the ends of drained clients) while that goes well, then stop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        # The publisher's progress has no event of its own: poll it, bounded.
        while len(self._outbox) and self._flowing and loop.time() < deadline and not self._nc.is_closed:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        if len(self._outbox):
            log.warning("events not sent at stop", queued=len(self._outbox))
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # Bounded: a publish stuck under a reconnect must not hold the gateway's stop.
            await asyncio.wait((task,), timeout=STOP_GRACE)
            if not task.done():
                log.warning("events publisher did not stop in time", grace=STOP_GRACE)
        try:
            await asyncio.wait_for(self._writer.stop(), STOP_GRACE)
        except TimeoutError:
            log.warning("events writer did not stop in time", grace=STOP_GRACE)

    async def _run(self) -> None:
        outbox = self._outbox
        delay = FIRST_RETRY_DELAY
        failing = False
        while True:
            if not len(outbox):
                outbox.wake.clear()
                await outbox.wake.wait()
                # One loop turn more: what else happens in it joins the batch.
                await asyncio.sleep(0)
                continue
            await self._ready()
            outbox.count()
            generation = outbox.generation
            batch = outbox.peek(self._batch)
            if not batch:
                continue
            written = await self._writer.write(
                [Outgoing(q.subject, q.event.SerializeToString(), q.msg_id) for q in batch], self._ack_timeout
            )
            outbox.commit(generation, written.stored)
            error = written.error
            self._flowing = error is None
            if error is None:
                if failing:
                    log.info("events stored again")
                failing, delay = False, FIRST_RETRY_DELAY
                continue
            if isinstance(error, APIError) and not unavailable(error) and written.stored < len(batch):
                # Refused for good (too large, say): retrying would block the queue forever.
                log.error("event refused by the stream", msg_id=batch[written.stored].msg_id, error=str(error))
                outbox.refuse_first(generation)
                continue
            metrics.EVENTS_RETRIES.inc()
            if not failing:
                log.warning("events not stored, retrying", error=str(error) or type(error).__name__)
            failing = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY)

    async def _ready(self) -> None:
        """Wait while NATS is down or this gateway's epoch is in doubt (see the module docstring)."""
        while not (self._nc.is_connected and self._standing()):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
