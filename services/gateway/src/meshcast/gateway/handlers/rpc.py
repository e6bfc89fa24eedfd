"""rpc: a client's call to a backend, as a NATS request any backend can answer."""

from __future__ import annotations

from meshcast.proto.client_pb2 import RPCRequest, RPCResult
from meshcast.proto.proxy_pb2 import RPCReply
from meshcast.proto.proxy_pb2 import RPCRequest as BackendRequest
from meshcast.protocol import ErrorCode, ReplyError

from ..client import Client
from ..context import GatewayContext
from .channels import check_name


def check_method(ctx: GatewayContext, method: str) -> None:
    """A method becomes one subject token: bounded and printable, or error 107 (as a channel)."""
    if len(method) > ctx.settings.max_rpc_method_length:
        raise ReplyError.of(ErrorCode.BAD_REQUEST, "rpc method too long")
    check_name(method, "rpc method")


async def handle_rpc(ctx: GatewayContext, client: Client, request: RPCRequest) -> RPCResult:
    """A bad method name: 107; no backend for it: 108; a slow one: 100 (temporary); else its answer."""
    check_method(ctx, request.method)
    ask = BackendRequest(client=client.id, user=client.user, method=request.method, data=request.data, info=client.info)
    subject = ctx.subjects.rpc(request.method)
    reply = await ctx.proxy.call("rpc", ask, RPCReply(), subject=subject, missing=ErrorCode.NOT_AVAILABLE)
    return RPCResult(data=reply.result.data)
