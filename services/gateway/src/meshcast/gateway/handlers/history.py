"""history: a page of a channel's stored publications, or just its position."""

from __future__ import annotations

from meshcast.proto.client_pb2 import HistoryRequest, HistoryResult
from meshcast.proto.history_pb2 import HistoryRequest as StoreRequest
from meshcast.protocol import ErrorCode, ReplyError

from ..client import Client
from ..context import GatewayContext
from .channels import check_private, check_user_limited, may_read_history, resolve
from .publications import client_publication


async def handle_history(ctx: GatewayContext, client: Client, request: HistoryRequest) -> HistoryResult:
    channel = request.channel
    options = resolve(ctx, channel)
    check_private(client, channel)
    check_user_limited(client, channel)
    if not options.history_size:
        raise ReplyError.of(ErrorCode.NOT_AVAILABLE)
    if not may_read_history(client, options):
        raise ReplyError.of(ErrorCode.PERMISSION_DENIED)
    query = StoreRequest(channel=channel, limit=request.limit, reverse=request.reverse)
    if request.HasField("since"):
        query.has_since = True
        query.since_offset = request.since.offset
        query.since_epoch = request.since.epoch
    reply = await ctx.history.history(query)
    publications = [client_publication(p, reply.epoch) for p in reply.publications]
    return HistoryResult(epoch=reply.epoch, offset=reply.offset, publications=publications)
