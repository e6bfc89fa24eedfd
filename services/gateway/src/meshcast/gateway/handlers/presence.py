"""presence and presence_stats: asked of the presence service, which sees every gateway."""

from __future__ import annotations

from nats.errors import Error as NatsError

from meshcast.bus.requests import presence_parts
from meshcast.proto.client_pb2 import PresenceRequest, PresenceStatsRequest, PresenceStatsResult
from meshcast.proto.presence_pb2 import QueryReply
from meshcast.protocol import ErrorCode, ReplyError

from ..client import Client
from ..context import GatewayContext
from .channels import check_private, check_user_limited, resolve
from .result import EncodedResult


async def _query(ctx: GatewayContext, client: Client, channel: str, stats_only: bool) -> list[QueryReply]:
    options = resolve(ctx, channel)
    check_private(client, channel)
    check_user_limited(client, channel)
    if not options.presence:
        raise ReplyError.of(ErrorCode.NOT_AVAILABLE)
    if not options.allow_presence:
        raise ReplyError.of(ErrorCode.PERMISSION_DENIED)
    if channel not in client.channels and not options.allow_presence_without_subscribe:
        raise ReplyError.of(ErrorCode.PERMISSION_DENIED)
    try:
        parts = await presence_parts(
            ctx.nc, ctx.subjects, channel, stats_only=stats_only, wait=ctx.settings.nats_timeout
        )
    except (NatsError, TimeoutError) as exc:
        raise ReplyError.of(ErrorCode.INTERNAL, "presence unavailable") from exc
    for part in parts:
        if part.HasField("error"):
            raise ReplyError(part.error.code, part.error.message or "presence failed")
    return parts


async def handle_presence(ctx: GatewayContext, client: Client, request: PresenceRequest) -> EncodedResult:
    """Members come encoded by the presence service: joined, not re-encoded."""
    parts = await _query(ctx, client, request.channel, stats_only=False)
    members = b",".join(p.json_members for p in parts if p.json_members)
    # `presence` even when empty, as Centrifugo writes it.
    return EncodedResult(proto=b"".join(p.proto_members for p in parts), json=b'{"presence":{' + members + b"}}")


async def handle_presence_stats(
    ctx: GatewayContext, client: Client, request: PresenceStatsRequest
) -> PresenceStatsResult:
    [reply, *_] = await _query(ctx, client, request.channel, stats_only=True)
    return PresenceStatsResult(num_clients=reply.num_clients, num_users=reply.num_users)
