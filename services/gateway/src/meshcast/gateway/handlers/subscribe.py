"""subscribe and unsubscribe."""

from __future__ import annotations

import asyncio

import structlog

from meshcast.proto.client_pb2 import SubscribeRequest, SubscribeResult, UnsubscribeRequest, UnsubscribeResult
from meshcast.protocol import ErrorCode, ReplyError

from ..client import Client
from ..context import GatewayContext
from .channels import check_private, check_user_limited, resolve

log = structlog.get_logger(__name__)


async def handle_subscribe(ctx: GatewayContext, client: Client, request: SubscribeRequest) -> SubscribeResult:
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
    try:
        await asyncio.wait_for(ctx.hub.subscribe(channel, client), ctx.settings.nats_timeout)
    except (TimeoutError, ConnectionError) as exc:
        log.warning("subscribe failed", channel=channel, client=client.id, error=type(exc).__name__)
        raise ReplyError.of(ErrorCode.INTERNAL) from exc
    log.debug("subscribed", channel=channel, client=client.id)
    return SubscribeResult()


async def handle_unsubscribe(ctx: GatewayContext, client: Client, request: UnsubscribeRequest) -> UnsubscribeResult:
    await ctx.hub.unsubscribe(request.channel, client)
    return UnsubscribeResult()
