"""rpc: a client's call to a backend, as a NATS request any backend can answer."""

from __future__ import annotations

from meshcast.proto.client_pb2 import RPCRequest, RPCResult
from meshcast.proto.proxy_pb2 import RPCReply
from meshcast.proto.proxy_pb2 import RPCRequest as BackendRequest
from meshcast.protocol import ErrorCode

from ..client import Client
from ..context import GatewayContext


async def handle_rpc(ctx: GatewayContext, client: Client, request: RPCRequest) -> RPCResult:
    """No backend for the method: 108; a slow one: 100 (temporary); else its answer."""
    ask = BackendRequest(client=client.id, user=client.user, method=request.method, data=request.data, info=client.info)
    subject = ctx.subjects.rpc(request.method)
    reply = await ctx.proxy.call("rpc", ask, RPCReply(), subject=subject, missing=ErrorCode.NOT_AVAILABLE)
    return RPCResult(data=reply.result.data)
