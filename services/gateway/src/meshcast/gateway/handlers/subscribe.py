"""subscribe, unsubscribe and sub_refresh; history channels with position and recovery.

`subscribe_client` is the one path into a channel, shared by the subscribe
command and by the server-side subscriptions a connection token lists.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from meshcast.bus import is_private
from meshcast.common.namespaces import ChannelOptions
from meshcast.proto.bus_pb2 import Publisher
from meshcast.proto.client_pb2 import (
    SubRefreshRequest,
    SubRefreshResult,
    SubscribeRequest,
    SubscribeResult,
    UnsubscribeRequest,
    UnsubscribeResult,
)
from meshcast.proto.proxy_pb2 import SubscribeReply as ProxySubscribeReply
from meshcast.proto.proxy_pb2 import SubscribeRequest as ProxySubscribeRequest
from meshcast.protocol import DisconnectCode, DisconnectError, ErrorCode, ReplyError

from ..client import Client
from ..context import GatewayContext
from .channels import check_user_limited, may_read_history, resolve
from .publications import client_publication
from .result import AfterReply

log = structlog.get_logger(__name__)

# SubscribeRequest.flag bit: answer error 112 instead of "recovered: false".
REJECT_UNRECOVERED = 2


@dataclass(frozen=True, slots=True)
class Grant:
    """What a subscription token (or a connection token's `subs`) gives the client."""

    info: bytes = b""
    expires_at: float | None = None
    # The subscription token's jti: revoking it ends the subscription.
    jti: str = ""


# The delta compressions of the client protocol. None is applied here, so a known one is
# answered without delta (as Centrifugo does for a type its namespace does not allow);
# an unknown one is a bad request (3501), as Centrifugo closes it.
DELTA_TYPES = frozenset({"fossil"})


async def handle_subscribe(ctx: GatewayContext, client: Client, request: SubscribeRequest) -> AfterReply:
    if request.delta and request.delta not in DELTA_TYPES:
        raise DisconnectError.of(DisconnectCode.BAD_REQUEST)
    channel = request.channel
    options = resolve(ctx, channel)
    check_user_limited(client, channel)
    if request.token:
        grant = await _verify_subscription_token(ctx, client, channel, request.token)
    elif options.proxy_subscribe:
        grant = await _ask_backend(ctx, client, request)
    elif is_private(channel):
        raise ReplyError.of(ErrorCode.PERMISSION_DENIED, "subscription token required")
    elif not options.allow_subscribe or (not client.user and not options.allow_subscribe_anonymous):
        raise ReplyError.of(ErrorCode.PERMISSION_DENIED)
    else:
        grant = Grant()
    result, then = await subscribe_client(ctx, client, request, options, grant)
    return AfterReply(result, then)


async def _verify_subscription_token(ctx: GatewayContext, client: Client, channel: str, token: str) -> Grant:
    """The grant of a subscription token. One that does not verify is error 103 (see `auth`);
    a valid one for another channel or user closes the connection with 3500, as in Centrifugo."""
    claims = await ctx.verifier.verify_subscribe(token)
    if claims.channel != channel or claims.user != client.user:
        log.info("subscription token for another channel or user", channel=channel, client=client.id)
        raise DisconnectError.of(DisconnectCode.INVALID_TOKEN)
    if ctx.revocations.revoked(claims.user, claims.jti, claims.issued_at):
        log.info("revoked subscription token refused", user=claims.user, channel=channel)
        raise DisconnectError.of(DisconnectCode.INVALID_TOKEN)
    return Grant(claims.info, claims.expires_at, claims.jti)


async def _ask_backend(ctx: GatewayContext, client: Client, request: SubscribeRequest) -> Grant:
    ask = ProxySubscribeRequest(
        client=client.id, user=client.user, channel=request.channel, data=request.data, info=client.info
    )
    result = (await ctx.proxy.call("subscribe", ask, ProxySubscribeReply())).result
    return Grant(result.info, float(result.expire_at) if result.expire_at else None)


async def subscribe_client(
    ctx: GatewayContext, client: Client, request: SubscribeRequest, options: ChannelOptions, grant: Grant
) -> tuple[SubscribeResult, Callable[[], None]]:
    """Subscribe `client` (permission already decided); the result and what runs after it is sent."""
    channel = request.channel
    if channel in client.channels:
        raise ReplyError.of(ErrorCode.ALREADY_SUBSCRIBED)
    if len(client.channels) >= ctx.settings.max_channels_per_connection:
        raise ReplyError.of(ErrorCode.LIMIT_EXCEEDED)
    if options.history_size:
        result, go_live = await _subscribe_with_history(ctx, client, request, options)
    else:
        try:
            await asyncio.wait_for(
                ctx.hub.subscribe(channel, client, join_leave=options.join_leave), ctx.settings.nats_timeout
            )
        except (TimeoutError, ConnectionError) as exc:
            log.warning("subscribe failed", channel=channel, client=client.id, error=type(exc).__name__)
            raise ReplyError.of(ErrorCode.INTERNAL) from exc
        result, go_live = SubscribeResult(), None
    client.set_subscription(channel, grant.info, grant.expires_at, grant.jti)
    ttl = ctx.ttl(grant.expires_at)
    result.expires, result.ttl = bool(ttl), ttl
    log.debug("subscribed", channel=channel, client=client.id)

    def then() -> None:
        if go_live is not None:
            go_live()
        _announce(ctx, client, request, options)

    return result, then


def _announce(ctx: GatewayContext, client: Client, request: SubscribeRequest, options: ChannelOptions) -> None:
    """Behind the subscribe reply: its subscribe event, join/leave pushes for the client,
    its own join for the others."""
    channel = request.channel
    if channel not in client.channels:
        return
    if ctx.events is not None:
        ctx.events.subscribed(client.id, channel, client.channel_info(channel))
    if options.join_leave and (options.force_push_join_leave or request.join_leave):
        ctx.hub.want_join_leave(channel, client)
    if options.presence:
        info = Publisher(
            user=client.user, client=client.id, conn_info=client.info, chan_info=client.channel_info(channel)
        )
        ctx.presence.joined(channel, info)


async def _subscribe_with_history(
    ctx: GatewayContext, client: Client, request: SubscribeRequest, options: ChannelOptions
) -> tuple[SubscribeResult, Callable[[], None]]:
    """Join first (live publications buffer from here), then read the position or
    recover from history: nothing falls between the two reads."""
    channel = request.channel
    try:
        joiner = await asyncio.wait_for(
            ctx.hub.join(channel, client, join_leave=options.join_leave), ctx.settings.nats_timeout
        )
    except (TimeoutError, ConnectionError) as exc:
        raise ReplyError.of(ErrorCode.INTERNAL) from exc
    try:
        if request.recover and options.recovery:
            rec = await ctx.history.recover(channel, request.epoch, request.offset, options.recovery_max_publications)
            if not rec.recovered and request.flag & REJECT_UNRECOVERED:
                raise ReplyError.of(ErrorCode.UNRECOVERABLE_POSITION)
            # Recovered, the result's offset is the one the client sent, as in Centrifugo: the
            # SDK moves on with each publication to the last one's (`rec.offset`, where the
            # live path takes over). Not recovered, it is where the client stands now.
            result = SubscribeResult(
                recoverable=True,
                positioned=True,
                epoch=rec.epoch,
                offset=request.offset if rec.recovered else rec.offset,
                was_recovering=True,
                recovered=rec.recovered,
                publications=[client_publication(p, rec.epoch) for p in rec.publications],
            )
            position, channel_offset = rec.offset, rec.channel_offset
            log.info(
                "recovering subscribe",
                channel=channel,
                client=client.id,
                recovered=rec.recovered,
                missed=len(rec.publications),
            )
        else:
            pos = await ctx.history.position(channel)
            # A positioned subscription (asked for by a client that may read the history, as in
            # Centrifugo, or given to every subscriber of a namespace with recovery).
            positioned = options.recovery or (request.positioned and may_read_history(client, options))
            result = SubscribeResult(
                recoverable=options.recovery, positioned=positioned, epoch=pos.epoch, offset=pos.offset
            )
            position, channel_offset = pos.offset, pos.channel_offset
    except BaseException:
        await ctx.hub.unsubscribe(channel, client)
        raise

    def go_live() -> None:
        ctx.hub.activate(channel, joiner, position=position, channel_offset=channel_offset, epoch=result.epoch)

    return result, go_live


async def handle_unsubscribe(ctx: GatewayContext, client: Client, request: UnsubscribeRequest) -> UnsubscribeResult:
    await ctx.hub.unsubscribe(request.channel, client)
    return UnsubscribeResult()


async def handle_sub_refresh(ctx: GatewayContext, client: Client, request: SubRefreshRequest) -> SubRefreshResult:
    """A new subscription token for a subscription: extends it. As in Centrifugo: a channel
    the client is not in is 103 (before anything else), an expired token an empty result (the
    subscription ends at its old expiry, and the SDK gets a new token then), and a token that
    does not verify, or grants another channel or user, closes the connection with 3500."""
    channel = request.channel
    if channel not in client.channels:
        raise ReplyError.of(ErrorCode.PERMISSION_DENIED, "not subscribed")
    if not request.token:
        raise ReplyError.of(ErrorCode.BAD_REQUEST, "token required")
    try:
        grant = await _verify_subscription_token(ctx, client, channel, request.token)
    except ReplyError as err:
        if err.code == ErrorCode.TOKEN_EXPIRED:
            log.info("sub_refresh with an expired token", channel=channel, client=client.id)
            return SubRefreshResult()
        raise DisconnectError.of(DisconnectCode.INVALID_TOKEN) from err
    if client.sub_expires is not None:
        client.sub_expires.pop(channel, None)
    client.set_subscription(channel, grant.info or client.channel_info(channel), grant.expires_at, grant.jti)
    ttl = ctx.ttl(grant.expires_at)
    return SubRefreshResult(expires=bool(ttl), ttl=ttl)
