"""Reading the events stream into the ledger, and telling what the ledger derives.

One ordered consumer reads the stream in order from the ledger's position
(`Announcer.on_message`); each message is applied at once, without waiting.
What the ledger derives goes out through one publisher task, in order, with
its deterministic ``Nats-Msg-Id`` and retried until stored.

When to tell (so that several instances, and one replaying old messages, tell
each thing once): every instance derives the same announcements with the same
ids, and the stream drops a copy of an id it stored within its duplicate
window W. An announcement whose cause was stored less than W/2 ago is told at
once: any copy another instance told went out after that cause was stored,
hence within W. An older one (this instance is replaying) waits until the
instance has read to the end of the stream: by then every copy told before
is one it has read, and that took the announcement out of `pending`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque

import structlog
from google.protobuf.message import DecodeError
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.js.errors import APIError

from meshcast.bus.retry import unavailable
from meshcast.bus.writer import MSG_ID, Outgoing, StreamWriter
from meshcast.proto.events_pb2 import Event

from . import metrics
from .ledger import Announcement, Ledger

log = structlog.get_logger(__name__)

FIRST_RETRY_DELAY = 0.05
MAX_RETRY_DELAY = 1.0


def stream_time_ms(msg: Msg) -> int:
    """When the stream stored `msg`, in Unix milliseconds (the same on every replica)."""
    return int(msg.metadata.timestamp.timestamp() * 1000)


class Announcer:
    def __init__(
        self,
        nc: Nats,
        ledger: Ledger,
        *,
        duplicate_window: float,
        batch: int,
        ack_timeout: float,
    ) -> None:
        self._nc = nc
        self.ledger = ledger
        self._young_ms = int(duplicate_window * 1000 / 2)
        self._batch = batch
        self._ack_timeout = ack_timeout
        self._writer = StreamWriter(nc)
        self._outbox: deque[Announcement] = deque()
        self._released: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Read to the end of the stream at least once (ready), and the seq of the last change.
        self.caught_up = False
        self.flowing = True

    async def start(self) -> None:
        await self._writer.start()
        self._task = asyncio.create_task(self._run())

    async def stop(self, wait: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        # The publisher's progress has no event of its own: poll it, bounded.
        while self._outbox and self.flowing and loop.time() < deadline and self._nc.is_connected:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._writer.stop()

    # Reading.

    async def on_message(self, msg: Msg) -> None:
        event = Event()
        try:
            event.ParseFromString(msg.data)
        except DecodeError:
            metrics.BAD.inc()
            log.warning("not an event in the events stream", subject=msg.subject)
            return
        meta = msg.metadata
        msg_id = msg.headers.get(MSG_ID, "") if msg.headers else ""
        cause_ms = stream_time_ms(msg)
        new = self.ledger.apply(meta.sequence.stream, cause_ms, msg_id, event)
        self._released.discard(msg_id)
        metrics.APPLIED.labels(event.WhichOneof("kind") or "none").inc()
        metrics.LAG.set(meta.num_pending)
        if meta.num_pending == 0:
            self.at_end()
        elif new:
            now_ms = time.time_ns() // 1_000_000
            self._release([a for a in new if now_ms - a.cause_time_ms < self._young_ms])
        self._gauges()

    def at_end(self) -> None:
        """Everything stored so far is applied: tell all that is still owed."""
        if not self.caught_up:
            log.info("events ledger caught up", seq=self.ledger.seq, pending=len(self.ledger.pending))
        self.caught_up = True
        self._release(list(self.ledger.pending.values()))

    def _release(self, announcements: list[Announcement]) -> None:
        for announcement in announcements:
            if announcement.msg_id in self._released:
                continue
            self._released.add(announcement.msg_id)
            self._outbox.append(announcement)
        if self._outbox:
            self._wake.set()

    def _gauges(self) -> None:
        ledger = self.ledger
        metrics.CONNECTIONS.set(ledger.connection_count())
        metrics.SUBSCRIPTIONS.set(ledger.subscription_count())
        metrics.CHANNELS.set(len(ledger.occupied()))
        metrics.PENDING.set(len(ledger.pending))

    # Telling.

    def _take(self) -> list[Announcement]:
        """Up to a batch of what is still owed (seen ones are dropped, not sent)."""
        batch: list[Announcement] = []
        while self._outbox and len(batch) < self._batch:
            announcement = self._outbox.popleft()
            if announcement.msg_id in self.ledger.pending:
                batch.append(announcement)
            else:
                self._released.discard(announcement.msg_id)
        return batch

    async def _run(self) -> None:
        delay = FIRST_RETRY_DELAY
        failing = False
        while True:
            if not self._outbox:
                self._wake.clear()
                await self._wake.wait()
                continue
            while not self._nc.is_connected:  # noqa: ASYNC110 - reconnects have no event here
                await asyncio.sleep(0.05)
            batch = self._take()
            if not batch:
                continue
            written = await self._writer.write(
                [Outgoing(a.subject, a.event.SerializeToString(), a.msg_id) for a in batch], self._ack_timeout
            )
            for announcement in batch[: written.stored]:
                metrics.ANNOUNCED.labels(announcement.event.WhichOneof("kind") or "none").inc()
            rest = batch[written.stored :]
            error = written.error
            self.flowing = error is None
            if error is None:
                if failing:
                    log.info("announcements stored again")
                failing, delay = False, FIRST_RETRY_DELAY
                continue
            if isinstance(error, APIError) and not unavailable(error):
                log.error("announcement refused by the stream", msg_id=rest[0].msg_id, error=str(error))
                rest = rest[1:]
            self._outbox.extendleft(reversed(rest))
            metrics.RETRIES.inc()
            if not failing:
                log.warning("announcements not stored, retrying", error=str(error) or type(error).__name__)
            failing = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY)
