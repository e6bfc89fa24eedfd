"""Reading the events stream with a durable pull consumer and handing each event to its lane.

The consumer (`webhooks-<name>`, explicit acks, ``max_ack_pending`` =
max_in_flight, filtered to the relayed kinds: never the dead letters) is
created or updated at start, so a restarted relay resumes where it was
acknowledged and a changed kind filter takes effect. The fetch loop asks for
as many events as there is room for under max_in_flight; each goes to its
ordering key's lane (``lanes``), whose one worker delivers them in stream
order and acknowledges each once it was answered 2xx or dead-lettered. A
keeper sends a progress ack for every held event each third of ``ack_wait``,
so a long retry or a long queue is not redelivered behind its own back; a
relay that dies has its unacknowledged events redelivered to the next one
(at least once: the endpoint may see an event again, with the same id).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, Final

import structlog
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import Error as JetStreamError

from meshcast.bus import Subjects
from meshcast.bus.retry import until_ready
from meshcast.bus.subjects import CHANNEL_EVENT_KINDS
from meshcast.bus.writer import MSG_ID
from meshcast.proto.events_pb2 import Event

from . import metrics
from .delivery import Delivery, Job
from .lanes import Lanes, ordering_key, shard_of
from .settings import WebhookSettings
from .signing import event_body

log = structlog.get_logger(__name__)

# At most this many events per fetch request, and how long one waits for the first.
FETCH_BATCH: Final = 256
FETCH_WAIT: Final = 1.0
FETCH_FAILURE_DELAY: Final = 0.5


class Relay:
    def __init__(self, js: JetStreamContext, subjects: Subjects, settings: WebhookSettings, delivery: Delivery) -> None:
        self._js = js
        self._subjects = subjects
        self._settings = settings
        self._delivery = delivery
        self._lanes: Lanes[tuple[Job, Msg]] = Lanes()
        self._room = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sub: JetStreamContext.PullSubscription | None = None
        self._fetcher: asyncio.Task[None] | None = None

    @property
    def bound(self) -> bool:
        """The consumer is bound and events are being fetched (a relay that stopped fetching is unready)."""
        return self._sub is not None and self._fetcher is not None and not self._fetcher.done()

    def consumer_config(self) -> ConsumerConfig:
        settings = self._settings
        return ConsumerConfig(
            durable_name=settings.durable,
            description=f"Meshcast webhook relay {settings.webhook_name}",
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=settings.webhook_ack_wait,
            max_ack_pending=settings.webhook_max_in_flight,
            max_deliver=-1,
            deliver_policy=DeliverPolicy.ALL if settings.webhook_deliver == "all" else DeliverPolicy.NEW,
            filter_subjects=self._subjects.event_filters(settings.kinds),
        )

    async def start(self) -> None:
        stream, durable = self._subjects.events_stream, self._settings.durable
        await until_ready(lambda: self._js.add_consumer(stream, self.consumer_config()), what="webhook consumer")
        self._sub = await self._js.pull_subscribe_bind(durable=durable, stream=stream)
        self._fetcher = self._spawn(self._fetch_loop())
        self._spawn(self._keep_held())
        log.info("webhook consumer bound", stream=stream, durable=durable, kinds=list(self._settings.kinds))

    async def stop(self) -> None:
        """Stop fetching and delivering; what is held is redelivered to the next relay."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    # Fetching.

    async def _fetch_loop(self) -> None:
        assert self._sub is not None
        limit = self._settings.webhook_max_in_flight
        while True:
            metrics.HELD.set(len(self._lanes))
            room = limit - len(self._lanes)
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                msgs = await self._sub.fetch(min(room, FETCH_BATCH), timeout=FETCH_WAIT)
            except TimeoutError:
                continue
            except (NatsError, JetStreamError) as exc:
                log.warning("webhook fetch failed", error=str(exc) or type(exc).__name__)
                await asyncio.sleep(FETCH_FAILURE_DELAY)
                continue
            for msg in msgs:
                await self._accept(msg)

    async def _accept(self, msg: Msg) -> None:
        event = Event()
        try:
            event.ParseFromString(msg.data)
        except DecodeError:
            event.Clear()
        kind = event.WhichOneof("kind")
        if kind is None:
            metrics.BAD.inc()
            log.warning("not an event in the events stream: dropped", subject=msg.subject)
            await _settle(msg.term())
            return
        key = ordering_key(event)
        settings = self._settings
        if settings.webhook_shards > 1 and shard_of(key, settings.webhook_shards) != settings.webhook_shard:
            metrics.SKIPPED.inc()
            await _settle(msg.ack())
            return
        seq = msg.metadata.sequence.stream
        event_id = (msg.headers or {}).get(MSG_ID) or f"seq:{seq}"
        channel = str(getattr(getattr(event, kind), "channel", "")) if kind in CHANNEL_EVENT_KINDS else None
        job = Job(seq, event_id, kind, channel, msg.data, event_body(event, event_id=event_id, seq=seq))
        if self._lanes.add(key, seq, (job, msg)):
            self._spawn(self._work(key))

    # Delivering.

    async def _work(self, key: str) -> None:
        """Deliver `key`'s events one after another, in stream order, until its lane is empty."""
        while (entry := self._lanes.take(key)) is not None:
            job, msg = entry[1]
            await self._delivery.deliver(job)
            await _settle(msg.ack())
            self._room.set()
        metrics.HELD.set(len(self._lanes))

    async def _keep_held(self) -> None:
        interval = self._settings.webhook_ack_wait / 3
        while True:
            await asyncio.sleep(interval)
            for _, msg in list(self._lanes.held()):
                await _settle(msg.in_progress())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook relay task failed", error=repr(task.exception()))


async def _settle(ack: Coroutine[Any, Any, None]) -> None:
    """An ack, a progress ack or a term: lost with the connection is redelivered, not fatal."""
    try:
        await ack
    except (NatsError, JetStreamError) as exc:
        log.info("ack not sent", error=str(exc) or type(exc).__name__)
