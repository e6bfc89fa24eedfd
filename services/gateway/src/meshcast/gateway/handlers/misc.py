"""ping, and send (a message with no reply: dropped, no backend route for it yet)."""

from __future__ import annotations

from google.protobuf.message import Message

from meshcast.proto.client_pb2 import PingResult

from ..client import Client
from ..context import GatewayContext


async def handle_send(ctx: GatewayContext, client: Client, request: Message) -> None:
    return None


async def handle_ping(ctx: GatewayContext, client: Client, request: Message) -> PingResult:
    return PingResult()
