"""ping, send, and the commands whose services arrive with later issues.

Those are answered "not available" (108):

rpc comes with backend RPC routing. `send` has no reply, so it is dropped.
"""

from __future__ import annotations

from google.protobuf.message import Message

from meshcast.proto.client_pb2 import PingResult
from meshcast.protocol import ErrorCode, ReplyError

from ..client import Client
from ..context import GatewayContext


async def handle_unavailable(ctx: GatewayContext, client: Client, request: Message) -> Message:
    raise ReplyError.of(ErrorCode.NOT_AVAILABLE)


async def handle_send(ctx: GatewayContext, client: Client, request: Message) -> None:
    return None


async def handle_ping(ctx: GatewayContext, client: Client, request: Message) -> PingResult:
    return PingResult()
