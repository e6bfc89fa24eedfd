"""connect and refresh: who the client is, for how long, and its server-side subscriptions."""

from __future__ import annotations

import math
from collections.abc import Callable

import structlog

from meshcast.proto.client_pb2 import ConnectRequest, ConnectResult, RefreshRequest, RefreshResult, SubscribeRequest
from meshcast.proto.proxy_pb2 import ConnectReply as ProxyConnectReply
from meshcast.proto.proxy_pb2 import ConnectRequest as ProxyConnectRequest
from meshcast.proto.proxy_pb2 import RefreshReply as ProxyRefreshReply
from meshcast.proto.proxy_pb2 import RefreshRequest as ProxyRefreshRequest
from meshcast.protocol import Disconnect, DisconnectCode, DisconnectError, ErrorCode, ReplyError
from meshcast.tokens import ConnectionClaims

from ..client import Client
from ..context import GatewayContext
from .result import AfterReply
from .subscribe import Grant, subscribe_client

log = structlog.get_logger(__name__)


def _check_revoked(ctx: GatewayContext, claims: ConnectionClaims) -> None:
    if ctx.revocations.revoked(claims.user, claims.jti, claims.issued_at):
        log.info("revoked token refused", user=claims.user)
        raise DisconnectError.of(DisconnectCode.INVALID_TOKEN)


async def _claims(ctx: GatewayContext, client: Client, request: ConnectRequest) -> ConnectionClaims:
    if request.token:
        claims = await ctx.verifier.verify_connect(request.token)
        _check_revoked(ctx, claims)
        return claims
    if ctx.settings.proxy_connect:
        return await _proxy_claims(ctx, client, request)
    if ctx.channels.allow_anonymous:
        return ConnectionClaims(user="", expires_at=None)
    # As Centrifugo: a connect without credentials where they are required is a bad request.
    log.info("connect without a token refused", client=client.id)
    raise DisconnectError.of(DisconnectCode.BAD_REQUEST)


async def _proxy_claims(ctx: GatewayContext, client: Client, request: ConnectRequest) -> ConnectionClaims:
    """No token: a backend decides (cookie sessions and the like)."""
    headers = dict(client.handshake or {})
    remote = headers.pop("_remote_addr", "")
    ask = ProxyConnectRequest(
        client=client.id,
        protocol=client.format.value,
        name=request.name,
        version=request.version,
        data=request.data,
        headers=headers,
        remote_addr=remote,
    )
    reply = await ctx.proxy.call("connect", ask, ProxyConnectReply())
    result = reply.result
    client.proxied = True
    client.handshake = None
    return ConnectionClaims(
        user=result.user,
        expires_at=float(result.expire_at) if result.expire_at else None,
        info=result.info,
        channels=dict.fromkeys(result.channels, b""),
    )


async def handle_connect(ctx: GatewayContext, client: Client, request: ConnectRequest) -> AfterReply:
    claims = await _claims(ctx, client, request)
    limit = ctx.settings.max_connections_per_user
    if limit and claims.user and len(ctx.hub.clients_of(claims.user)) >= limit:
        log.info("connection limit per user", user=claims.user)
        raise DisconnectError.of(DisconnectCode.CONNECTION_LIMIT)
    client.user = claims.user
    client.info = claims.info
    client.jti = claims.jti
    client.expires_at = claims.expires_at
    client.next_ping = ctx.clock() + ctx.settings.ping_interval
    ctx.hub.add_client(client)
    if ctx.events is not None:
        ctx.events.connected(
            client.id,
            client.user,
            client.info,
            protocol=client.format.value,
            remote_addr=client.remote_addr,
            name=request.name,
            version=request.version,
        )
    client.session.connected()
    log.info("connected", client=client.id, user=client.user, format=client.format.value, remote=client.remote_addr)
    # A proxied connection is refreshed by the gateway asking the backend, not by the SDK.
    ttl = 0 if client.proxied else ctx.ttl(claims.expires_at)
    result = ConnectResult(
        client=client.id,
        version=ctx.version,
        expires=bool(ttl),
        ttl=ttl,
        ping=math.ceil(ctx.settings.ping_interval),
        pong=True,
        node=ctx.settings.node_name,
    )
    thens = await _server_side_subscriptions(ctx, client, claims, request, result)

    def after_connect() -> None:
        for then in thens:
            then()

    return AfterReply(result, after_connect)


async def _server_side_subscriptions(
    ctx: GatewayContext, client: Client, claims: ConnectionClaims, request: ConnectRequest, result: ConnectResult
) -> list[Callable[[], None]]:
    """Subscribe the client to the channels its token lists (recovering where the SDK asks)."""
    thens = []
    for channel, info in claims.channels.items():
        options = ctx.channels.options_for(channel)
        if options is None:
            log.warning("token lists a channel of an unknown namespace", channel=channel, client=client.id)
            continue
        asked = request.subs.get(channel) if channel in request.subs else None
        sub_request = SubscribeRequest(channel=channel)
        if asked is not None:
            sub_request.recover, sub_request.epoch, sub_request.offset = asked.recover, asked.epoch, asked.offset
        try:
            sub_result, then = await subscribe_client(ctx, client, sub_request, options, Grant(info=info))
        except ReplyError as err:
            log.warning("server-side subscription failed", channel=channel, client=client.id, code=err.code)
            continue
        # The `data` of the token's `subs` entry goes to the client with it, as in Centrifugo.
        sub_result.data = claims.subs_data.get(channel, b"")
        result.subs[channel].CopyFrom(sub_result)
        thens.append(then)
    return thens


async def handle_refresh(ctx: GatewayContext, client: Client, request: RefreshRequest) -> RefreshResult:
    if not request.token:
        raise ReplyError.of(ErrorCode.BAD_REQUEST, "token required")
    try:
        claims = await ctx.verifier.verify_connect(request.token)
    except ReplyError as err:
        if err.code != ErrorCode.TOKEN_EXPIRED:
            raise
        # As Centrifugo: a refresh with an expired token ends the connection ("connection expired").
        log.info("refresh with an expired token", client=client.id, user=client.user)
        raise DisconnectError.of(DisconnectCode.EXPIRED) from err
    if claims.user != client.user:
        raise DisconnectError.of(DisconnectCode.INVALID_TOKEN)
    _check_revoked(ctx, claims)
    client.jti = claims.jti
    client.expires_at = claims.expires_at
    client.info = claims.info or client.info
    ttl = ctx.ttl(claims.expires_at)
    return RefreshResult(client=client.id, version=ctx.version, expires=bool(ttl), ttl=ttl)


async def refresh_by_proxy(ctx: GatewayContext, client: Client) -> None:
    """Ask the backend whether a proxied connection lives on (the sweep calls this before expiry)."""
    ask = ProxyRefreshRequest(client=client.id, user=client.user, info=client.info)
    try:
        reply = await ctx.proxy.call("refresh", ask, ProxyRefreshReply())
    except ReplyError as err:
        log.info("proxy refresh failed, retried later", client=client.id, code=err.code)
        return
    except DisconnectError as err:
        client.close(err.disconnect)
        return
    if reply.result.expired:
        client.close(Disconnect.of(DisconnectCode.EXPIRED))
        return
    client.expires_at = float(reply.result.expire_at) if reply.result.expire_at else None
    client.info = reply.result.info or client.info
