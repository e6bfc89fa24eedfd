"""subscribe and unsubscribe; on history channels with position and recovery."""

from __future__ import annotations

import asyncio

import structlog

from meshcast.common.namespaces import ChannelOptions
from meshcast.proto.bus_pb2 import Publisher
from meshcast.proto.client_pb2 import (
    SubscribeRequest,
    SubscribeResult,
    UnsubscribeRequest,
    UnsubscribeResult,
)
from meshcast.protocol import ErrorCode, ReplyError

from ..client import Client
from ..context import GatewayContext
from .channels import check_private, check_user_limited, resolve
from .publications import client_publication
from .result import AfterReply

log = structlog.get_logger(__name__)

# SubscribeRequest.flag bit: answer error 112 instead of "recovered: false".
REJECT_UNRECOVERED = 2


async def handle_subscribe(
    ctx: GatewayContext, client: Client, request: SubscribeRequest
) -> SubscribeResult | AfterReply:
    channel = request.channel
    options = resolve(ctx, channel)
    check_private(channel)
    check_user_limited(client, channel)
    if not options.allow_subscribe or (not client.user and not options.allow_subscribe_anonymous):
        raise ReplyError.of(ErrorCode.PERMISSION_DENIED)
    if channel in client.channels:
        raise ReplyError.of(ErrorCode.ALREADY_SUBSCRIBED)
    if len(client.channels) >= ctx.settings.max_channels_per_connection:
        raise ReplyError.of(ErrorCode.LIMIT_EXCEEDED)
    if options.history_size:
        return await _subscribe_with_history(ctx, client, request, options)
    try:
        await asyncio.wait_for(
            ctx.hub.subscribe(channel, client, join_leave=options.join_leave), ctx.settings.nats_timeout
        )
    except (TimeoutError, ConnectionError) as exc:
        log.warning("subscribe failed", channel=channel, client=client.id, error=type(exc).__name__)
        raise ReplyError.of(ErrorCode.INTERNAL) from exc
    log.debug("subscribed", channel=channel, client=client.id)
    return AfterReply(SubscribeResult(), lambda: _announce(ctx, client, request, options))


def _announce(ctx: GatewayContext, client: Client, request: SubscribeRequest, options: ChannelOptions) -> None:
    """Behind the subscribe reply: join/leave pushes for the client, its own join for the others."""
    channel = request.channel
    if channel not in client.channels:
        return
    if options.join_leave and (options.force_push_join_leave or request.join_leave):
        client.join_leave.add(channel)
    if options.presence:
        ctx.presence.joined(channel, Publisher(user=client.user, client=client.id, conn_info=client.info))


async def _subscribe_with_history(
    ctx: GatewayContext, client: Client, request: SubscribeRequest, options: ChannelOptions
) -> AfterReply:
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
            result = SubscribeResult(
                recoverable=True,
                positioned=True,
                epoch=rec.epoch,
                offset=rec.offset,
                was_recovering=True,
                recovered=rec.recovered,
                publications=[client_publication(p) for p in rec.publications],
            )
            channel_offset = rec.channel_offset
            log.info(
                "recovering subscribe",
                channel=channel,
                client=client.id,
                recovered=rec.recovered,
                missed=len(rec.publications),
            )
        else:
            pos = await ctx.history.position(channel)
            result = SubscribeResult(
                recoverable=options.recovery, positioned=options.recovery, epoch=pos.epoch, offset=pos.offset
            )
            channel_offset = pos.channel_offset
    except BaseException:
        await ctx.hub.unsubscribe(channel, client)
        raise

    def go_live() -> None:
        ctx.hub.activate(channel, joiner, position=result.offset, channel_offset=channel_offset, epoch=result.epoch)
        _announce(ctx, client, request, options)

    return AfterReply(result, go_live)


async def handle_unsubscribe(ctx: GatewayContext, client: Client, request: UnsubscribeRequest) -> UnsubscribeResult:
    await ctx.hub.unsubscribe(request.channel, client)
    return UnsubscribeResult()
