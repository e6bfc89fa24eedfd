"""presence and presence_stats: asked of the presence service, which sees every gateway."""

from __future__ import annotations

from google.protobuf.message import DecodeError
from nats.errors import Error as NatsError

from meshcast.proto.client_pb2 import (
    ClientInfo,
    PresenceRequest,
    PresenceResult,
    PresenceStatsRequest,
    PresenceStatsResult,
)
from meshcast.proto.presence_pb2 import QueryReply, QueryRequest
from meshcast.protocol import ErrorCode, ReplyError

from ..client import Client
from ..context import GatewayContext
from .channels import check_private, check_user_limited, resolve


async def _query(ctx: GatewayContext, client: Client, channel: str, stats_only: bool) -> QueryReply:
    options = resolve(ctx, channel)
    check_private(channel)
    check_user_limited(client, channel)
    if not options.presence:
        raise ReplyError.of(ErrorCode.NOT_AVAILABLE)
    if not options.allow_presence:
        raise ReplyError.of(ErrorCode.PERMISSION_DENIED)
    if channel not in client.channels and not options.allow_presence_without_subscribe:
        raise ReplyError.of(ErrorCode.PERMISSION_DENIED)
    reply = QueryReply()
    try:
        msg = await ctx.nc.request(
            ctx.subjects.presence_query,
            QueryRequest(channel=channel, stats_only=stats_only).SerializeToString(),
            timeout=ctx.settings.nats_timeout,
        )
        reply.ParseFromString(msg.data)
    except (NatsError, TimeoutError, DecodeError) as exc:
        raise ReplyError.of(ErrorCode.INTERNAL, "presence unavailable") from exc
    if reply.HasField("error"):
        raise ReplyError(reply.error.code, reply.error.message)
    return reply


async def handle_presence(ctx: GatewayContext, client: Client, request: PresenceRequest) -> PresenceResult:
    reply = await _query(ctx, client, request.channel, stats_only=False)
    result = PresenceResult()
    for client_id, i in reply.clients.items():
        result.presence[client_id].CopyFrom(
            ClientInfo(user=i.user, client=i.client, conn_info=i.conn_info, chan_info=i.chan_info)
        )
    return result


async def handle_presence_stats(
    ctx: GatewayContext, client: Client, request: PresenceStatsRequest
) -> PresenceStatsResult:
    reply = await _query(ctx, client, request.channel, stats_only=True)
    return PresenceStatsResult(num_clients=reply.num_clients, num_users=reply.num_users)
