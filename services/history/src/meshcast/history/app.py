"""Composition root of the history service: streams, the API endpoints, health."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client as Nats
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from meshcast.bus import Subjects, close, subscriptions_applied
from meshcast.bus.requests import is_inbox, reply_limit
from meshcast.common.health import HealthServer
from meshcast.common.namespaces import load_channels_config
from meshcast.common.node import NodeInfoResponder, node_name
from meshcast.common.service import connect_nats
from meshcast.common.telemetry import DESTINATION, extract, tracer, tracing_enabled
from meshcast.proto.history_pb2 import (
    HistoryReply,
    HistoryRequest,
    PositionReply,
    PositionRequest,
    RecoverReply,
    RecoverRequest,
    RemoveReply,
    RemoveRequest,
)
from meshcast.protocol import ErrorCode

from . import metrics
from .retry import retry_unavailable
from .service import HistoryFailure, HistoryService, error_reply
from .settings import HistorySettings
from .store import HistoryStore, StoreError, StreamMissing
from .streams import ensure_streams_when_ready, stream_specs
from .usage import JetStreamUsage

log = structlog.get_logger(__name__)

Call = Callable[[Any], Awaitable[Message]]


class HistoryApp:
    def __init__(self, settings: HistorySettings) -> None:
        self.settings = settings
        self.channels = load_channels_config(settings.namespaces_file)
        self.subjects = Subjects(settings.subject_prefix, self.channels.namespace_separator)
        # Here, not at start: caps that add up to more than the total stop the service at build.
        self._specs = stream_specs(
            self.channels,
            self.subjects,
            replicas=settings.history_replicas,
            storage=settings.history_storage,
            duplicate_window=settings.duplicate_window,
            max_bytes=settings.history_max_bytes,
            total_max_bytes=settings.history_total_max_bytes,
        )
        self._nc: Nats | None = None
        self._micro: Service | None = None
        self._health = HealthServer(settings.health_host, settings.health_port, self.ready)
        self._limit = asyncio.Semaphore(settings.max_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._serving = False
        self._usage: JetStreamUsage | None = None

    def ready(self) -> bool:
        return self._serving and self._nc is not None and self._nc.is_connected

    @property
    def health_port(self) -> int:
        return self._health.port

    async def start(self) -> None:
        settings = self.settings
        # Alive (/health) from the start, ready once the streams are there and requests served.
        await self._health.start()
        self._nc = nc = await connect_nats(settings)
        js = nc.jetstream(timeout=settings.nats_timeout)
        self._usage = JetStreamUsage(js)
        self._usage.start()
        specs = self._specs
        await ensure_streams_when_ready(js, specs)
        attempt = settings.history_read_attempt_timeout
        store = HistoryStore(nc, nc.jetstream(timeout=attempt), attempt)
        service = HistoryService(
            store,
            self.channels,
            self.subjects,
            settings.max_history_limit,
            reply_limit(nc, settings.max_reply_bytes),
        )
        self._micro = await add_service(
            nc,
            name="meshcast-history",
            version="0.1.0",
            queue_group=settings.queue_group,
            description="Meshcast channel history and recovery",
        )
        # Reads are retried through an election; a remove is not (it writes: a retry
        # after a lost reply would purge what was published since).
        endpoints: list[tuple[str, type[Message], type[Message], Call]] = [
            ("position", PositionRequest, PositionReply, self._reads(service.position)),
            ("recover", RecoverRequest, RecoverReply, self._reads(service.recover)),
            ("history", HistoryRequest, HistoryReply, self._reads(service.history)),
            ("remove", RemoveRequest, RemoveReply, service.remove),
        ]
        for name, request_type, reply_type, call in endpoints:
            await self._micro.add_endpoint(
                name=name,
                subject=self.subjects.history_api(name),
                handler=self._handler(name, request_type, reply_type, call),
            )
        await NodeInfoResponder(nc, self.subjects, node_name("history", settings.node_name)).start()
        await subscriptions_applied(nc)  # the server routes requests here before we say we are ready
        self._serving = True
        log.info("history started", streams=[s.config.name for s in specs], health_port=self._health.port)

    def _reads(self, call: Call) -> Call:
        deadline = self.settings.history_read_deadline

        async def read(request: Any) -> Message:
            return await retry_unavailable(lambda: call(request), deadline=deadline, endpoint=call.__name__)

        return read

    def _handler(
        self, name: str, request_type: type[Message], reply_type: type[Message], call: Call
    ) -> Callable[[Request], Awaitable[None]]:
        async def handle(request: Request) -> None:
            # nats-py's micro Request has no public reply subject.
            reply = request._msg.reply
            if not is_inbox(reply):
                metrics.REFUSED_REPLIES.inc()
                log.warning("history request refused: reply is not an inbox", endpoint=name, reply=reply[:100])
                return
            # One task a request: the endpoint's subscription stays free for the next.
            task = asyncio.create_task(self._answer(name, request, request_type, reply_type, call))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return handle

    async def _answer(
        self, name: str, request: Request, request_type: type[Message], reply_type: type[Message], call: Call
    ) -> None:
        async with self._limit:
            metrics.REQUESTS.labels(name).inc()
            with metrics.LATENCY.labels(name).time():
                if not tracing_enabled():
                    reply = await self._reply(name, request, request_type, reply_type, call)
                else:
                    parent = extract(request.headers)
                    span = f"meshcast.history.{name}"
                    with tracer.start_as_current_span(span, context=parent, kind=SpanKind.SERVER):
                        reply = await self._reply(name, request, request_type, reply_type, call)
            try:
                await request.respond(reply.SerializeToString())
            except Exception as exc:  # the requester is gone, or NATS is: nothing to answer
                log.warning("history reply not sent", endpoint=name, error=repr(exc))

    async def _reply(
        self, name: str, request: Request, request_type: type[Message], reply_type: type[Message], call: Call
    ) -> Message:
        """The reply to one request: every failure becomes an error reply, and is logged with its reason."""
        parsed = request_type()
        try:
            parsed.ParseFromString(request.data)
        except DecodeError as exc:
            log.warning("history request undecodable", endpoint=name, size=len(request.data), error=str(exc))
            return error_reply(reply_type, HistoryFailure(ErrorCode.BAD_REQUEST))
        channel = getattr(parsed, "channel", "")
        if channel and tracing_enabled():
            trace.get_current_span().set_attribute(DESTINATION, channel)
        try:
            return await call(parsed)
        except HistoryFailure as failure:
            log.info(
                "history request refused",
                endpoint=name,
                channel=channel,
                code=int(failure.code),
                reason=failure.message,
            )
            return error_reply(reply_type, failure)
        except StreamMissing as exc:
            log.warning("history stream missing", endpoint=name, channel=channel, stream=str(exc))
            return error_reply(reply_type, HistoryFailure(ErrorCode.NOT_AVAILABLE, "history stream missing"))
        except StoreError as exc:
            # Unavailable past the deadline, or an answer JetStream should not give: temporary, never a verdict.
            metrics.FAILURES.labels(name).inc()
            log.warning("history read failed", endpoint=name, channel=channel, error=str(exc), kind=type(exc).__name__)
            return error_reply(reply_type, HistoryFailure(ErrorCode.INTERNAL))
        except Exception:
            metrics.FAILURES.labels(name).inc()
            log.exception("history request failed", endpoint=name, channel=channel)
            return error_reply(reply_type, HistoryFailure(ErrorCode.INTERNAL))

    async def stop(self) -> None:
        if self._micro is not None:
            with contextlib.suppress(Exception):
                await self._micro.stop()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.settings.nats_timeout)
        if self._usage is not None:
            await self._usage.stop()
        await self._health.stop()
        if self._nc is not None:
            await close(self._nc, self.settings.nats_timeout)
        log.info("history stopped")
