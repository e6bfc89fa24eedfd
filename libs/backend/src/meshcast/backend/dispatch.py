"""One request of the gateway (``meshcast.proxy.v1``) in, one reply out.

`answer` is the whole contract of a handler, with no NATS in it: the request
decoded into its typed view, the handler called under a timeout, its result
(or its `Reject` / `Disconnect`) encoded into the reply the gateway expects.
Whatever else happens becomes a reply too, so the gateway never waits out its
own timeout for a backend that failed:

- an undecodable request: error 107 (bad request);
- a handler slower than `time_limit`: error 100, temporary (the client may retry);
- any other exception, or a result of the wrong type: error 100, temporary,
  logged with its traceback here and never sent to the client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import structlog
from google.protobuf.message import DecodeError

from meshcast.proto import proxy_pb2 as pb
from meshcast.protocol import ErrorCode

from .errors import Disconnect, Reject
from .types import (
    Connect,
    ConnectRequest,
    Publish,
    PublishRequest,
    Refresh,
    RefreshRequest,
    RPCRequest,
    Subscribe,
    SubscribeRequest,
)

log = structlog.get_logger("meshcast.backend")

Req = TypeVar("Req")
ProxyReply = pb.ConnectReply | pb.RefreshReply | pb.SubscribeReply | pb.PublishReply | pb.RPCReply
Handler = Callable[[Req], Awaitable[Any]]

TIMEOUT_REASON = "backend timeout"
INTERNAL_REASON = "backend error"


@dataclass(frozen=True, slots=True)
class Decision(Generic[Req]):
    """How one kind of request is read and its handler's result written."""

    kind: str
    decode: Callable[[bytes], Req]
    reply: Callable[[], ProxyReply]
    # Writes the handler's result into the reply; TypeError for a result of the wrong type.
    fill: Callable[[Any, Any], None]


def _decode_connect(data: bytes) -> ConnectRequest:
    m = pb.ConnectRequest.FromString(data)
    return ConnectRequest(m.client, m.protocol, m.name, m.version, m.data, dict(m.headers), m.remote_addr)


def _fill_connect(reply: pb.ConnectReply, result: object) -> None:
    if not isinstance(result, Connect):
        raise TypeError(f"a connect handler returns Connect, not {type(result).__name__}")
    reply.result.CopyFrom(
        pb.ConnectResult(user=result.user, expire_at=result.expire_at, info=result.info, channels=result.channels)
    )


def _decode_refresh(data: bytes) -> RefreshRequest:
    m = pb.RefreshRequest.FromString(data)
    return RefreshRequest(m.client, m.user, m.info)


def _fill_refresh(reply: pb.RefreshReply, result: object) -> None:
    if not isinstance(result, Refresh):
        raise TypeError(f"a refresh handler returns Refresh, not {type(result).__name__}")
    reply.result.CopyFrom(pb.RefreshResult(expired=result.expired, expire_at=result.expire_at, info=result.info))


def _decode_subscribe(data: bytes) -> SubscribeRequest:
    m = pb.SubscribeRequest.FromString(data)
    return SubscribeRequest(m.client, m.user, m.channel, m.data, m.info)


def _fill_subscribe(reply: pb.SubscribeReply, result: object) -> None:
    result = Subscribe() if result is None else result
    if not isinstance(result, Subscribe):
        raise TypeError(f"a subscribe handler returns Subscribe or None, not {type(result).__name__}")
    reply.result.CopyFrom(pb.SubscribeResult(info=result.info, expire_at=result.expire_at))


def _decode_publish(data: bytes) -> PublishRequest:
    m = pb.PublishRequest.FromString(data)
    return PublishRequest(m.client, m.user, m.channel, m.data, m.info)


def _fill_publish(reply: pb.PublishReply, result: object) -> None:
    result = Publish() if result is None else result
    if not isinstance(result, Publish):
        raise TypeError(f"a publish handler returns Publish or None, not {type(result).__name__}")
    reply.result.CopyFrom(pb.PublishResult(data=result.data or b""))


def _decode_rpc(data: bytes) -> RPCRequest:
    m = pb.RPCRequest.FromString(data)
    return RPCRequest(m.client, m.user, m.method, m.data, m.info)


def _fill_rpc(reply: pb.RPCReply, result: object) -> None:
    if result is None:
        result = b""
    if not isinstance(result, bytes):
        raise TypeError(f"an rpc handler returns bytes or None, not {type(result).__name__}")
    reply.result.CopyFrom(pb.RPCResult(data=result))


CONNECT = Decision("connect", _decode_connect, pb.ConnectReply, _fill_connect)
REFRESH = Decision("refresh", _decode_refresh, pb.RefreshReply, _fill_refresh)
SUBSCRIBE = Decision("subscribe", _decode_subscribe, pb.SubscribeReply, _fill_subscribe)
PUBLISH = Decision("publish", _decode_publish, pb.PublishReply, _fill_publish)
RPC = Decision("rpc", _decode_rpc, pb.RPCReply, _fill_rpc)


def _refuse(reply: ProxyReply, code: int, message: str, temporary: bool = False) -> None:
    reply.error.CopyFrom(pb.ProxyError(code=code, message=message, temporary=temporary))


async def answer(decision: Decision[Req], handler: Handler[Req], payload: bytes, *, time_limit: float) -> bytes:
    """The serialized reply to `payload` as `handler` decides it (see the module docstring)."""
    reply = decision.reply()
    try:
        request = decision.decode(payload)
    except DecodeError:
        log.warning("undecodable request", kind=decision.kind)
        _refuse(reply, ErrorCode.BAD_REQUEST, ErrorCode.BAD_REQUEST.message)
        return reply.SerializeToString()
    try:
        async with asyncio.timeout(time_limit) as deadline:
            result = await handler(request)
        decision.fill(reply, result)
    except Reject as refused:
        _refuse(reply, refused.code, refused.reason, refused.temporary)
    except Disconnect as closing:
        reply.disconnect.CopyFrom(pb.ProxyDisconnect(code=closing.code, reason=closing.reason))
    except TimeoutError:
        if not deadline.expired():
            log.exception("handler failed", kind=decision.kind, handler=_name(handler))
            _refuse(reply, ErrorCode.INTERNAL, INTERNAL_REASON, temporary=True)
        else:
            log.warning("handler too slow", kind=decision.kind, handler=_name(handler), time_limit=time_limit)
            _refuse(reply, ErrorCode.INTERNAL, TIMEOUT_REASON, temporary=True)
    except Exception:
        log.exception("handler failed", kind=decision.kind, handler=_name(handler))
        _refuse(reply, ErrorCode.INTERNAL, INTERNAL_REASON, temporary=True)
    return reply.SerializeToString()


def _name(handler: object) -> str:
    return getattr(handler, "__qualname__", None) or repr(handler)
