"""publish: a client's publication into a channel, through NATS to every gateway."""

from __future__ import annotations

import structlog
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError

from meshcast.bus import encode_publication, trace_headers
from meshcast.proto.bus_pb2 import Publisher
from meshcast.proto.client_pb2 import PublishRequest, PublishResult
from meshcast.protocol import ErrorCode, ReplyError

from .. import metrics
from ..client import Client
from ..context import GatewayContext
from .channels import check_private, check_user_limited, resolve

log = structlog.get_logger(__name__)


async def handle_publish(ctx: GatewayContext, client: Client, request: PublishRequest) -> PublishResult:
    channel = request.channel
    options = resolve(ctx, channel)
    check_private(client, channel)
    check_user_limited(client, channel)
    if not options.allow_publish or (not client.user and not options.allow_publish_anonymous):
        raise ReplyError.of(ErrorCode.PERMISSION_DENIED)
    if not request.data:
        raise ReplyError.of(ErrorCode.BAD_REQUEST, "publication data required")
    publisher = None
    if options.publish_info:
        publisher = Publisher(
            user=client.user, client=client.id, conn_info=client.info, chan_info=client.channel_info(channel)
        )
    body = encode_publication(channel, request.data, publisher=publisher)
    headers = trace_headers() or None
    try:
        if options.history_size:
            # Acknowledged means stored: the reply waits for JetStream's ack.
            await ctx.js.publish(ctx.subjects.input(channel), body, timeout=ctx.settings.nats_timeout, headers=headers)
            metrics.HISTORY_PUBLISHES.inc()
        else:
            await ctx.nc.publish(ctx.subjects.live(channel), body, headers=headers)
    except (NatsError, JetStreamError, ConnectionError, TimeoutError) as exc:
        log.warning("publish failed", channel=channel, client=client.id, error=type(exc).__name__)
        raise ReplyError.of(ErrorCode.INTERNAL) from exc
    metrics.PUBLISHES.inc()
    return PublishResult()
