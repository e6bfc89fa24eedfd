"""connect and refresh: who the client is, and for how long."""

from __future__ import annotations

import math

import structlog

from meshcast.proto.client_pb2 import ConnectRequest, ConnectResult, RefreshRequest, RefreshResult
from meshcast.protocol import DisconnectCode, DisconnectError, ErrorCode, ReplyError

from ..auth import ConnectClaims
from ..client import Client
from ..context import GatewayContext

log = structlog.get_logger(__name__)


def _claims(ctx: GatewayContext, token: str) -> ConnectClaims:
    if token:
        return ctx.verifier.verify_connect(token)
    if ctx.channels.allow_anonymous:
        return ConnectClaims(user="", expires_at=None, info=b"")
    raise ReplyError.of(ErrorCode.UNAUTHORIZED, "connection token required")


def _ttl(ctx: GatewayContext, expires_at: float | None) -> int:
    if expires_at is None:
        return 0
    return max(1, math.ceil(expires_at - ctx.clock()))


async def handle_connect(ctx: GatewayContext, client: Client, request: ConnectRequest) -> ConnectResult:
    claims = _claims(ctx, request.token)
    client.user = claims.user
    client.info = claims.info
    client.expires_at = claims.expires_at
    now = ctx.clock()
    client.next_ping = now + ctx.settings.ping_interval
    ctx.hub.add_client(client)
    client.session.connected()
    log.info("connected", client=client.id, user=client.user, format=client.format.value)
    ttl = _ttl(ctx, claims.expires_at)
    return ConnectResult(
        client=client.id,
        version=ctx.version,
        expires=bool(ttl),
        ttl=ttl,
        ping=math.ceil(ctx.settings.ping_interval),
        pong=True,
        node=ctx.settings.node_name,
    )


async def handle_refresh(ctx: GatewayContext, client: Client, request: RefreshRequest) -> RefreshResult:
    if not request.token:
        raise ReplyError.of(ErrorCode.BAD_REQUEST, "token required")
    claims = ctx.verifier.verify_connect(request.token)
    if claims.user != client.user:
        raise DisconnectError.of(DisconnectCode.INVALID_TOKEN)
    client.expires_at = claims.expires_at
    client.info = claims.info or client.info
    ttl = _ttl(ctx, claims.expires_at)
    return RefreshResult(client=client.id, version=ctx.version, expires=bool(ttl), ttl=ttl)
