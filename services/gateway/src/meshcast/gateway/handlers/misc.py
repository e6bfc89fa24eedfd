"""ping, and send: a message with no reply, which no backend route receives."""

from __future__ import annotations

from google.protobuf.message import Message

from meshcast.proto.client_pb2 import PingResult
from meshcast.protocol import DisconnectCode, DisconnectError

from ..client import Client
from ..context import GatewayContext


async def handle_send(ctx: GatewayContext, client: Client, request: Message) -> None:
    """No message handler: the connection closes with 3508 "not available", as Centrifugo's
    does without one, rather than the message vanishing unseen (a `send` has no reply that
    could carry an error)."""
    raise DisconnectError.of(DisconnectCode.NOT_AVAILABLE)


async def handle_ping(ctx: GatewayContext, client: Client, request: Message) -> PingResult:
    return PingResult()
