"""Lifecycle events from ``MESHCAST_EVENTS`` through a durable pull consumer.

The consumer is the backend's own, named after it (several replicas bind the
same one and share its events), filtered to the kinds its handler takes. The
first start creates it, from new events on (``deliver="new"``) or from the
oldest retained (``"all"``); every later start binds it, so JetStream hands
over what arrived while the backend was down. An event is acknowledged only
after its handler returned: one that raises or runs past its timeout is
handed out again after `retry_delay` (``max_deliver`` times in all), and with
``max_ack_pending=1`` nothing after it is delivered meanwhile, so events are
handled in stream order.

A stream that does not exist yet (the events service not started) is waited
for in the background; a consumer NATS permissions refuse fails the start
with `PermissionDenied`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

import structlog
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from meshcast.bus.subjects import EVENT_KINDS
from meshcast.proto.events_pb2 import Event

from .calls import NATS_FAILURES, Bus
from .errors import BackendError, Unavailable
from .types import LifecycleEvent

log = structlog.get_logger("meshcast.backend")

EventHandler = Callable[[LifecycleEvent], Awaitable[None]]

# JetStream's "stream not found" (the events service has not made it yet).
_STREAM_NOT_FOUND: Final = 10059
# How long one fetch waits for an event: also how long a stop may wait for an idle consumer.
FETCH_WAIT: Final = 1.0
# Between two tries to create or bind the consumer while the stream is missing.
_BIND_RETRY: Final = 1.0


@dataclass(frozen=True, slots=True)
class ConsumerOptions:
    """How a durable consumer is made (at its creation) and its events handled."""

    # "new": from the events after its creation on; "all": from the oldest retained.
    deliver: str = "new"
    # Seconds a handler may take; ack_wait is a little longer.
    timeout: float = 30.0
    max_ack_pending: int = 1
    max_deliver: int = 5
    retry_delay: float = 1.0


def check_kinds(kinds: Sequence[str], deliver: str) -> None:
    """ValueError unless `kinds` are lifecycle event kinds and `deliver` is "new" or "all"."""
    unknown = [kind for kind in kinds if kind not in EVENT_KINDS]
    if not kinds or unknown:
        raise ValueError(f"event kinds must be among {', '.join(EVENT_KINDS)}; got {list(kinds)}")
    if deliver not in ("new", "all"):
        raise ValueError(f"deliver is 'new' or 'all', not {deliver!r}")


class EventConsumer:
    """One handler's durable consumer and the task that feeds it events."""

    def __init__(
        self,
        bus: Bus,
        durable: str,
        kinds: Sequence[str],
        handler: EventHandler,
        options: ConsumerOptions,
    ) -> None:
        check_kinds(kinds, options.deliver)
        self._bus = bus
        self.durable = durable
        self.kinds = tuple(kinds)
        self._handler = handler
        self._deliver = DeliverPolicy.NEW if options.deliver == "new" else DeliverPolicy.ALL
        self._timeout = options.timeout
        self._max_ack_pending = options.max_ack_pending
        self._max_deliver = options.max_deliver
        self._retry_delay = options.retry_delay
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._sub: JetStreamContext.PullSubscription | None = None

    @property
    def filters(self) -> list[str]:
        # Per kind: never the webhook relay's dead letters, which share the stream.
        return self._bus.subjects.event_filters(self.kinds)

    async def start(self) -> None:
        """Bind (or create) the consumer and start reading; PermissionDenied when NATS refuses it."""
        try:
            self._sub = await self._bind()
        except _StreamMissing:
            log.warning("events stream not found, waiting for it", stream=self._bus.subjects.events_stream)
        self._task = asyncio.create_task(self._run(), name=f"events:{self.durable}")

    async def stop(self, wait: float) -> None:
        """Finish the event in hand (acked), then stop; past `wait`, cancel."""
        self._stopping = True
        task = self._task
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), wait)
        except TimeoutError:
            log.warning("event handler still running at stop, cancelled", durable=self.durable)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Unsubscribed here, not drained with the connection: nats-py's fetch leaves the pull
        # subscription's queue unjoinable, and a connection drain would wait on it in vain.
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(*NATS_FAILURES):
                await sub.unsubscribe()

    async def _bind(self) -> JetStreamContext.PullSubscription:
        bus = self._bus
        js = bus.nc.jetstream(timeout=bus.timeout)
        stream = bus.subjects.events_stream
        since = time.monotonic()
        what = f"durable consumer {self.durable!r} on {stream}"
        try:
            try:
                info = await js.consumer_info(stream, self.durable)
                if sorted(info.config.filter_subjects or [info.config.filter_subject or ""]) != sorted(self.filters):
                    log.warning(
                        "durable consumer filters differ from the handler's kinds; delete it to change them",
                        durable=self.durable,
                        filters=info.config.filter_subjects or info.config.filter_subject,
                    )
            except NotFoundError as exc:
                if exc.err_code == _STREAM_NOT_FOUND:
                    raise _StreamMissing from exc
                await js.add_consumer(stream, self._config())
                log.info("durable consumer created", durable=self.durable, kinds=self.kinds)
            return await js.pull_subscribe_bind(durable=self.durable, stream=stream)
        except _StreamMissing:
            raise
        except NATS_FAILURES as exc:
            bus.violations.check_prefix("publish", "$JS.API.", since=since, what=what)
            if isinstance(exc, NotFoundError) and exc.err_code == _STREAM_NOT_FOUND:
                raise _StreamMissing from exc
            raise Unavailable(f"{what}: {exc!r}") from exc

    def _config(self) -> ConsumerConfig:
        filters = self.filters
        return ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=self._deliver,
            # Longer than a handler may take: an event is redelivered only when its handler failed.
            ack_wait=self._timeout + 5.0,
            max_ack_pending=self._max_ack_pending,
            max_deliver=self._max_deliver,
            filter_subject=filters[0] if len(filters) == 1 else None,
            filter_subjects=filters if len(filters) > 1 else None,
        )

    async def _run(self) -> None:
        while not self._stopping:
            if self._sub is None:
                await self._bind_again()
                continue
            try:
                msgs = await self._sub.fetch(1, timeout=FETCH_WAIT)
            except NatsTimeout:
                continue
            except ConnectionClosedError:
                return
            except NATS_FAILURES as exc:
                log.warning("fetching events failed", durable=self.durable, error=repr(exc))
                await asyncio.sleep(FETCH_WAIT)
                continue
            for msg in msgs:
                await self._handle(msg)

    async def _bind_again(self) -> None:
        try:
            self._sub = await self._bind()
            log.info("events stream found; consuming", durable=self.durable)
        except _StreamMissing:
            await asyncio.sleep(_BIND_RETRY)
        except BackendError as exc:
            log.error("cannot bind the durable consumer", durable=self.durable, error=str(exc))
            await asyncio.sleep(_BIND_RETRY)

    async def _handle(self, msg: Msg) -> None:
        try:
            event = LifecycleEvent.of(Event.FromString(msg.data), msg.metadata.sequence.stream)
        except DecodeError:
            log.warning("undecodable event dropped", durable=self.durable, subject=msg.subject)
            await _settle(msg.term())
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._handler(event)
        except Exception as exc:
            too_slow = isinstance(exc, TimeoutError)
            log.exception(
                "event handler too slow" if too_slow else "event handler failed",
                durable=self.durable,
                kind=event.kind,
                sequence=event.sequence,
                retry_in=self._retry_delay,
            )
            await _settle(msg.nak(delay=self._retry_delay))
            return
        await _settle(msg.ack_sync(timeout=self._bus.timeout))


async def _settle(call: Awaitable[object]) -> None:
    """An ack or nak; one that fails (NATS away) only means the event comes again."""
    try:
        await call
    except NATS_FAILURES as exc:
        log.warning("ack failed; the event will be delivered again", error=repr(exc))


class _StreamMissing(Exception):
    """The events stream does not exist (yet)."""
