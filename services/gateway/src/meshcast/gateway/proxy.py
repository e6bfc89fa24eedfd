"""Decisions delegated to a backend over NATS request/reply (meshcast.proxy.v1).

A backend answers with a result, a protocol error (the connection stays) or
a disconnect; silence past the timeout is a temporary error, never a hang.
"""

from __future__ import annotations

from typing import TypeVar

import structlog
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client as Nats
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from opentelemetry.trace import SpanKind
from opentelemetry.util.types import AttributeValue

from meshcast.bus import Subjects, trace_headers
from meshcast.common.telemetry import DESTINATION, MESSAGING_SYSTEM, tracer, tracing_enabled
from meshcast.proto.proxy_pb2 import ConnectReply, PublishReply, RefreshReply, RPCReply, SubscribeReply
from meshcast.protocol import Disconnect, DisconnectError, ErrorCode, ReplyError

log = structlog.get_logger(__name__)

R = TypeVar("R", ConnectReply, RefreshReply, SubscribeReply, PublishReply, RPCReply)


class ProxyClient:
    def __init__(self, nc: Nats, subjects: Subjects, timeout: float) -> None:
        self._nc = nc
        self._subjects = subjects
        self._timeout = timeout

    async def call(
        self,
        method: str,
        request: Message,
        reply: R,
        *,
        subject: str | None = None,
        missing: ErrorCode = ErrorCode.INTERNAL,
    ) -> R:
        """The backend's result in `reply`; ReplyError or DisconnectError as it decided.

        A backend too slow to answer is a temporary error (100); none listening
        at all is `missing`: temporary too for the decisions the gateway needs
        (a backend restarting), "not available" (108) for an rpc method nobody serves."""
        target = subject or self._subjects.proxy(method)
        if not tracing_enabled():
            return await self._call(method, target, request, reply, missing)
        attributes: dict[str, AttributeValue] = {"meshcast.proxy.method": method, MESSAGING_SYSTEM: "nats"}
        channel = getattr(request, "channel", "")
        if channel:
            attributes[DESTINATION] = channel
        with tracer.start_as_current_span(f"meshcast.proxy.{method}", kind=SpanKind.CLIENT, attributes=attributes):
            return await self._call(method, target, request, reply, missing)

    async def _call(self, method: str, target: str, request: Message, reply: R, missing: ErrorCode) -> R:
        try:
            payload = request.SerializeToString()
            msg = await self._nc.request(target, payload, timeout=self._timeout, headers=trace_headers() or None)
            reply.ParseFromString(msg.data)
        except NoRespondersError as exc:
            log.info("no backend answers", subject=target)
            raise ReplyError.of(missing, "backend unavailable") from exc
        except (NatsError, TimeoutError) as exc:
            log.warning("backend did not answer", method=method, error=type(exc).__name__)
            raise ReplyError.of(ErrorCode.INTERNAL, "backend unavailable") from exc
        except DecodeError as exc:
            log.warning("backend answer undecodable", method=method)
            raise ReplyError.of(ErrorCode.INTERNAL) from exc
        if reply.HasField("disconnect"):
            code = reply.disconnect.code
            if not 3000 <= code <= 4999:
                code = 3503
            raise DisconnectError(Disconnect(code, reply.disconnect.reason or "backend disconnect"))
        if reply.HasField("error"):
            err = reply.error
            raise ReplyError(err.code or int(ErrorCode.INTERNAL), err.message or "backend refused", err.temporary)
        if not reply.HasField("result"):
            raise ReplyError.of(ErrorCode.INTERNAL, "backend answered without a result")
        return reply
