"""Composition root of the events service: the stream, the ledger, its checkpoints.

Start: make (or update) the stream from the settings, load the newest ledger
checkpoint, and read the stream with an ordered consumer from just after it
(see `announcer`). Ready once it has read to the end of the stream. Every
`checkpoint_interval` (and at stop) the ledger is checkpointed (see
`checkpoint`). Instances are interchangeable: each derives the same
announcements with the same ids, and the stream stores each once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from typing import Any

import structlog
from nats.aio.client import Client as Nats
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import Error as JetStreamError
from nats.js.kv import KeyValue

from meshcast.bus import Subjects, close
from meshcast.bus.retry import until_ready
from meshcast.bus.subjects import EVENTS_LEDGER_BUCKET
from meshcast.common.health import HealthServer
from meshcast.common.node import NodeInfoResponder, node_name
from meshcast.common.service import connect_nats

from . import metrics
from .announcer import Announcer
from .checkpoint import Checkpoints
from .ledger import Ledger
from .settings import EventsSettings
from .stream import ensure_stream, stream_config

log = structlog.get_logger(__name__)

# How often to ask the consumer whether everything was delivered while not caught up
# (the stream's tail may be gone, so no message says it).
CATCH_UP_POLL = 0.5


class EventsApp:
    def __init__(self, settings: EventsSettings) -> None:
        self.settings = settings
        self.subjects = Subjects(settings.subject_prefix)
        self._memory_ms = int(settings.ledger_memory * 1000)
        self._nc: Nats | None = None
        self._announcer: Announcer | None = None
        self._checkpoints: Checkpoints | None = None
        self._node: NodeInfoResponder | None = None
        self._sub: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._saved_seq = 0
        self._health = HealthServer(settings.health_host, settings.health_port, self.ready)

    def ready(self) -> bool:
        return (
            self._announcer is not None and self._announcer.caught_up and self._nc is not None and self._nc.is_connected
        )

    @property
    def health_port(self) -> int:
        return self._health.port

    @property
    def ledger(self) -> Ledger:
        assert self._announcer is not None
        return self._announcer.ledger

    async def start(self) -> None:
        settings = self.settings
        await self._health.start()
        self._nc = nc = await connect_nats(settings)
        js = nc.jetstream(timeout=settings.nats_timeout)
        await ensure_stream(js, stream_config(self.subjects, settings))
        self._checkpoints = await self._checkpoint_bucket(js)
        ledger = await self._restore()
        self._saved_seq = ledger.seq
        announcer = self._announcer = Announcer(
            nc,
            ledger,
            duplicate_window=settings.events_duplicate_window,
            batch=settings.publish_batch,
            ack_timeout=settings.publish_ack_timeout,
        )
        await announcer.start()
        info = await until_ready(lambda: js.stream_info(self.subjects.events_stream), what="events stream info")
        if ledger.seq and info.state.first_seq > ledger.seq + 1:
            metrics.GAPS.inc()
            log.error(
                "the events stream dropped events the ledger never applied",
                ledger_seq=ledger.seq,
                first_seq=info.state.first_seq,
            )
        elif not ledger.seq and info.state.first_seq > 1:
            log.warning("no ledger checkpoint and the stream's start aged out", first_seq=info.state.first_seq)
        # The events only: the webhook relay's dead letters share the stream (meshcast.bus.subjects).
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=ledger.seq + 1,
            filter_subjects=self.subjects.event_filters(),
        )
        self._sub = await until_ready(
            lambda: js.subscribe(
                self.subjects.events_wildcard(),
                stream=self.subjects.events_stream,
                cb=announcer.on_message,
                ordered_consumer=True,
                config=config,
            ),
            what="events consumer",
        )
        if ledger.seq >= info.state.last_seq:
            announcer.at_end()
        else:
            self._spawn(self._catch_up())
        self._spawn(self._checkpoint_every(settings.checkpoint_interval))
        self._node = NodeInfoResponder(nc, self.subjects, node_name("events", settings.node_name))
        await self._node.start()
        log.info(
            "events started",
            stream=self.subjects.events_stream,
            from_seq=ledger.seq + 1,
            last_seq=info.state.last_seq,
            health_port=self._health.port,
        )

    async def _checkpoint_bucket(self, js: JetStreamContext) -> Checkpoints | None:
        settings = self.settings

        async def create() -> KeyValue:
            return await js.create_key_value(
                bucket=EVENTS_LEDGER_BUCKET, ttl=settings.checkpoint_ttl, history=1, replicas=settings.ledger_replicas
            )

        try:
            kv = await until_ready(create, what="events ledger bucket")
        except (NatsError, JetStreamError) as exc:  # another config, say: run without, and say so
            log.error("ledger bucket unusable: no checkpoints", bucket=EVENTS_LEDGER_BUCKET, error=str(exc))
            return None
        return Checkpoints(kv, settings.checkpoint_chunk)

    async def _restore(self) -> Ledger:
        state = None
        if self._checkpoints is not None:
            try:
                state = await self._checkpoints.load()
            except (NatsError, JetStreamError) as exc:
                log.error("ledger checkpoint unreadable: reading the stream from its start", error=str(exc))
        if state is None:
            return Ledger(self.subjects, memory_ms=self._memory_ms)
        log.info("ledger restored", seq=state.seq, connections=len(state.connections))
        return Ledger.restore(self.subjects, state, memory_ms=self._memory_ms)

    async def _catch_up(self) -> None:
        """Caught up when the consumer has nothing left and everything it delivered is applied."""
        announcer = self._announcer
        assert announcer is not None
        while not announcer.caught_up:
            await asyncio.sleep(CATCH_UP_POLL)
            try:
                info = await self._sub.consumer_info()
            except (NatsError, JetStreamError, TimeoutError):
                continue
            if info.num_pending == 0 and info.delivered.stream_seq <= announcer.ledger.seq:
                announcer.at_end()

    async def _checkpoint_every(self, interval: float) -> None:
        refresh = self.settings.checkpoint_ttl / 4
        saved_at = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            due = self.ledger.seq != self._saved_seq or time.monotonic() - saved_at > refresh
            if due and await self._checkpoint():
                saved_at = time.monotonic()

    async def _checkpoint(self) -> bool:
        if self._checkpoints is None or self._announcer is None:
            return False
        state = self.ledger.state()
        try:
            await self._checkpoints.save(state)
        except (NatsError, JetStreamError, TimeoutError) as exc:
            log.warning("ledger checkpoint not written", seq=state.seq, error=str(exc))
            return False
        self._saved_seq = state.seq
        metrics.CHECKPOINTS.inc()
        return True

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._announcer is not None:
            await self._announcer.stop(self.settings.publish_ack_timeout)
            if self._nc is not None and self._nc.is_connected:
                await self._checkpoint()
        if self._node is not None:
            await self._node.stop()
        await self._health.stop()
        if self._nc is not None:
            await close(self._nc, self.settings.nats_timeout)
        log.info("events stopped")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
