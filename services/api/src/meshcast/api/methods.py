"""The API's methods by name: request type, handler, and batch fields.

One table for the HTTP path (`/api/<method>`), the gRPC servicer and
`batch`, so a method behaves the same on every way in. `call` is the
funnel: it runs a handler and turns any failure into a reply error, never
a stack trace.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextvars import Token
from dataclasses import dataclass
from typing import Any

import structlog
from google.protobuf.message import Message
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind
from opentelemetry.util.types import AttributeValue

from meshcast.common.telemetry import DESTINATION, tracer, tracing_enabled
from meshcast.proto import centrifugo_api_pb2 as api
from meshcast.protocol import ErrorCode

from . import metrics
from .errors import ApiError, bad_request
from .service import ApiService

log = structlog.get_logger(__name__)

Handler = Callable[[Any], Awaitable[Message]]


@dataclass(frozen=True, slots=True)
class Method:
    name: str
    request: type[Message]
    handler: Handler
    duration: Any = None
    succeeded: Any = None

    def __post_init__(self) -> None:
        # The labelled children, looked up once (a lookup per call costs more than the count).
        object.__setattr__(self, "duration", metrics.DURATION.labels(self.name))
        object.__setattr__(self, "succeeded", metrics.CALLS.labels(self.name, "0"))


def table(service: ApiService) -> dict[str, Method]:
    """Every method, named as in Centrifugo's HTTP API (and in Command/Reply)."""
    methods = [
        Method("publish", api.PublishRequest, service.publish),
        Method("broadcast", api.BroadcastRequest, service.broadcast),
        Method("subscribe", api.SubscribeRequest, service.subscribe),
        Method("unsubscribe", api.UnsubscribeRequest, service.unsubscribe),
        Method("disconnect", api.DisconnectRequest, service.disconnect),
        Method("refresh", api.RefreshRequest, service.refresh),
        Method("presence", api.PresenceRequest, service.presence),
        Method("presence_stats", api.PresenceStatsRequest, service.presence_stats),
        Method("history", api.HistoryRequest, service.history),
        Method("history_remove", api.HistoryRemoveRequest, service.history_remove),
        Method("channels", api.ChannelsRequest, service.channels),
        Method("info", api.InfoRequest, service.info),
    ]
    return {m.name: m for m in methods}


async def call(method: Method, request: Message) -> Message | api.Error:
    """The method's result, or the error to reply with; with tracing on, inside a
    server span of its own (so a publish carries its ``traceparent``)."""
    started = time.perf_counter()
    code = 0
    traced = _open_span(method, request) if tracing_enabled() else None
    try:
        return await method.handler(request)
    except ApiError as err:
        code = err.code
        return api.Error(code=err.code, message=err.message)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the funnel: nothing unexpected reaches a client but "internal"
        code = int(ErrorCode.INTERNAL)
        log.exception("api method failed", method=method.name, error=type(exc).__name__)
        return api.Error(code=code, message=ErrorCode.INTERNAL.message)
    finally:
        (metrics.CALLS.labels(method.name, str(code)) if code else method.succeeded).inc()
        method.duration.observe(time.perf_counter() - started)
        if traced is not None:
            _close_span(traced, code)


def _open_span(method: Method, request: Message) -> tuple[Span, Token[Context]]:
    """The call's span, made current (only called with tracing on)."""
    attributes: dict[str, AttributeValue] = {"meshcast.api.method": method.name}
    channel = getattr(request, "channel", "")
    if channel:
        attributes[DESTINATION] = channel
    span = tracer.start_span(f"meshcast.api.{method.name}", kind=SpanKind.SERVER, attributes=attributes)
    return span, otel_context.attach(trace.set_span_in_context(span))


def _close_span(traced: tuple[Span, Token[Context]], code: int) -> None:
    span, token = traced
    otel_context.detach(token)
    if code:
        span.set_attribute("meshcast.error_code", code)
    span.end()


class Batch:
    """``batch``: commands in order (or all at once with `parallel`), one reply each, in order."""

    def __init__(self, methods: dict[str, Method], max_commands: int) -> None:
        self._methods = methods
        self.max_commands = max_commands

    async def run(self, request: api.BatchRequest) -> api.BatchResponse:
        if len(request.commands) > self.max_commands:
            raise bad_request("too many commands")
        if request.parallel:
            replies = await asyncio.gather(*(self._one(c) for c in request.commands))
        else:
            replies = [await self._one(c) for c in request.commands]
        return api.BatchResponse(replies=replies)

    async def _one(self, command: api.Command) -> api.Reply:
        set_fields = command.ListFields()
        if len(set_fields) != 1 or set_fields[0][0].name not in self._methods:
            return api.Reply(error=api.Error(code=int(ErrorCode.BAD_REQUEST), message="one known method per command"))
        field, request = set_fields[0]
        outcome = await call(self._methods[field.name], request)
        reply = api.Reply()
        if isinstance(outcome, api.Error):
            reply.error.CopyFrom(outcome)
        else:
            result = getattr(reply, field.name)
            result.SetInParent()  # present even when empty (a publish without history)
            result.CopyFrom(outcome)
        return reply
