"""publish: a client's publication into a channel, through NATS to every gateway."""

from __future__ import annotations

import structlog
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError
from opentelemetry.trace import SpanKind
from opentelemetry.util.types import AttributeValue

from meshcast.bus import encode_publication, store, trace_headers
from meshcast.common.telemetry import DESTINATION, MESSAGING_SYSTEM, tracer, tracing_enabled
from meshcast.proto.bus_pb2 import Publisher
from meshcast.proto.client_pb2 import PublishRequest, PublishResult
from meshcast.proto.proxy_pb2 import PublishReply as ProxyPublishReply
from meshcast.proto.proxy_pb2 import PublishRequest as ProxyPublishRequest
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
    if not request.data:
        raise ReplyError.of(ErrorCode.BAD_REQUEST, "publication data required")
    data = request.data
    if options.proxy_publish:
        # The backend decides (instead of allow_publish), and may rewrite the data.
        ask = ProxyPublishRequest(client=client.id, user=client.user, channel=channel, data=data, info=client.info)
        decided = (await ctx.proxy.call("publish", ask, ProxyPublishReply())).result
        data = decided.data or data
    elif not options.allow_publish or (not client.user and not options.allow_publish_anonymous):
        raise ReplyError.of(ErrorCode.PERMISSION_DENIED)
    publisher = None
    if options.publish_info:
        publisher = Publisher(
            user=client.user, client=client.id, conn_info=client.info, chan_info=client.channel_info(channel)
        )
    body = encode_publication(channel, data, publisher=publisher)
    if not tracing_enabled():
        await _send(ctx, client, channel, bool(options.history_size), body, None)
    else:
        attributes: dict[str, AttributeValue] = {
            DESTINATION: channel,
            MESSAGING_SYSTEM: "nats",
            "meshcast.client": client.id,
            "meshcast.history": bool(options.history_size),
        }
        with tracer.start_as_current_span("meshcast.publish", kind=SpanKind.PRODUCER, attributes=attributes):
            await _send(ctx, client, channel, bool(options.history_size), body, trace_headers() or None)
    metrics.PUBLISHES.inc()
    if options.publish_events and ctx.events is not None:
        ctx.events.published(client.id, client.user, channel, data)
    return PublishResult()


async def _send(
    ctx: GatewayContext, client: Client, channel: str, history: bool, body: bytes, headers: dict[str, str] | None
) -> None:
    """Into JetStream (a channel with history) or core NATS; ReplyError 100 when NATS fails."""
    try:
        if history:
            # Acknowledged means stored: the reply waits for JetStream's ack,
            # through a leader election if one is under way (stored once).
            await store(
                ctx.js,
                ctx.subjects.input(channel),
                body,
                headers=headers,
                msg_id=None,
                deadline=ctx.settings.publish_deadline,
                ack_timeout=ctx.settings.nats_timeout,
            )
            metrics.HISTORY_PUBLISHES.inc()
        else:
            await ctx.nc.publish(ctx.subjects.live(channel), body, headers=headers)
    except (NatsError, JetStreamError, ConnectionError, TimeoutError) as exc:
        log.warning("publish failed", channel=channel, client=client.id, error=type(exc).__name__)
        raise ReplyError.of(ErrorCode.INTERNAL) from exc
