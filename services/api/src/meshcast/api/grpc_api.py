"""The gRPC shell: `centrifugal.centrifugo.api.CentrifugoApi` over the same method table.

The key comes in metadata ``authorization: apikey <key>``; a missing or wrong
one ends the call UNAUTHENTICATED before the servicer sees it
(`meshcast.common.apikey.KeyCheck`, on the server). Every other outcome is a
normal response carrying `error` or `result`, as Centrifugo's.
"""

from __future__ import annotations

from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from meshcast.proto import centrifugo_api_pb2 as api
from meshcast.proto import centrifugo_api_pb2_grpc

from .errors import ApiError
from .methods import Batch, Method, call

R = TypeVar("R", bound=Message)
Context = Any  # grpc.aio.ServicerContext (grpcio ships no type information)


class ApiServicer(centrifugo_api_pb2_grpc.CentrifugoApiServicer):
    def __init__(self, methods: dict[str, Method], batch: Batch) -> None:
        self._methods = methods
        self._batch = batch

    async def _run(self, name: str, request: Message, response: R, context: Context) -> R:
        outcome = await call(self._methods[name], request)
        # Every XResponse has the same two fields: error = 1, result = 2.
        fields: Any = response
        if isinstance(outcome, api.Error):
            fields.error.CopyFrom(outcome)
        else:
            fields.result.SetInParent()  # present even when empty
            fields.result.CopyFrom(outcome)
        return response

    async def Batch(self, request: api.BatchRequest, context: Context) -> api.BatchResponse:
        try:
            return await self._batch.run(request)
        except ApiError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "too many commands")
            raise  # not reached: abort raises

    async def Publish(self, request: api.PublishRequest, context: Context) -> api.PublishResponse:
        return await self._run("publish", request, api.PublishResponse(), context)

    async def Broadcast(self, request: api.BroadcastRequest, context: Context) -> api.BroadcastResponse:
        return await self._run("broadcast", request, api.BroadcastResponse(), context)

    async def Subscribe(self, request: api.SubscribeRequest, context: Context) -> api.SubscribeResponse:
        return await self._run("subscribe", request, api.SubscribeResponse(), context)

    async def Unsubscribe(self, request: api.UnsubscribeRequest, context: Context) -> api.UnsubscribeResponse:
        return await self._run("unsubscribe", request, api.UnsubscribeResponse(), context)

    async def Disconnect(self, request: api.DisconnectRequest, context: Context) -> api.DisconnectResponse:
        return await self._run("disconnect", request, api.DisconnectResponse(), context)

    async def Refresh(self, request: api.RefreshRequest, context: Context) -> api.RefreshResponse:
        return await self._run("refresh", request, api.RefreshResponse(), context)

    async def Presence(self, request: api.PresenceRequest, context: Context) -> api.PresenceResponse:
        return await self._run("presence", request, api.PresenceResponse(), context)

    async def PresenceStats(self, request: api.PresenceStatsRequest, context: Context) -> api.PresenceStatsResponse:
        return await self._run("presence_stats", request, api.PresenceStatsResponse(), context)

    async def History(self, request: api.HistoryRequest, context: Context) -> api.HistoryResponse:
        return await self._run("history", request, api.HistoryResponse(), context)

    async def HistoryRemove(self, request: api.HistoryRemoveRequest, context: Context) -> api.HistoryRemoveResponse:
        return await self._run("history_remove", request, api.HistoryRemoveResponse(), context)

    async def Channels(self, request: api.ChannelsRequest, context: Context) -> api.ChannelsResponse:
        return await self._run("channels", request, api.ChannelsResponse(), context)

    async def Info(self, request: api.InfoRequest, context: Context) -> api.InfoResponse:
        return await self._run("info", request, api.InfoResponse(), context)
