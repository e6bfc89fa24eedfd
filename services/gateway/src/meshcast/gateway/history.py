"""The gateway's client of the history service (NATS request/reply, protobuf)."""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client as Nats
from nats.errors import Error as NatsError

from meshcast.bus import Subjects, trace_headers
from meshcast.proto.history_pb2 import (
    HistoryReply,
    HistoryRequest,
    PositionReply,
    PositionRequest,
    RecoverReply,
    RecoverRequest,
)
from meshcast.protocol import ErrorCode, ReplyError

R = TypeVar("R", PositionReply, RecoverReply, HistoryReply)


class HistoryClient:
    def __init__(self, nc: Nats, subjects: Subjects, timeout: float) -> None:
        self._nc = nc
        self._subjects = subjects
        self._timeout = timeout

    async def _call(self, method: str, request: Message, reply: R) -> R:
        """The reply, or ReplyError: the service's own code, else a temporary internal error."""
        try:
            msg = await self._nc.request(
                self._subjects.history_api(method),
                request.SerializeToString(),
                timeout=self._timeout,
                headers=trace_headers() or None,
            )
            reply.ParseFromString(msg.data)
        except (NatsError, TimeoutError, DecodeError) as exc:
            raise ReplyError.of(ErrorCode.INTERNAL, "history unavailable") from exc
        if reply.HasField("error"):
            raise ReplyError(reply.error.code, reply.error.message, reply.error.code == ErrorCode.INTERNAL)
        return reply

    async def position(self, channel: str) -> PositionReply:
        return await self._call("position", PositionRequest(channel=channel), PositionReply())

    async def recover(self, channel: str, epoch: str, offset: int, max_publications: int) -> RecoverReply:
        request = RecoverRequest(channel=channel, epoch=epoch, offset=offset, max_publications=max_publications)
        return await self._call("recover", request, RecoverReply())

    async def history(self, request: HistoryRequest) -> HistoryReply:
        return await self._call("history", request, HistoryReply())
