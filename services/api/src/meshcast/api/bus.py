"""The API's requests on the bus: the history and presence services, and the
scatter-gather every gateway answers (``<p>.node.v1.channels`` and ``.info``).

A scatter-gather ends when every live gateway answered (the gateways the
presence heartbeats named within `gateway_timeout`), else when the scatter
window is over: a gateway that died or is slow costs at most the window.

Each call is bounded (`timeout`, or the scatter window) and turns a NATS
failure into error 100; a service's own error code comes back as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TypeVar

import structlog
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from meshcast.bus import Subjects
from meshcast.bus.requests import request_many
from meshcast.proto.history_pb2 import HistoryReply, PositionReply, RemoveReply
from meshcast.proto.node_pb2 import ChannelsReply, ChannelsRequest, InfoRequest, NodeInfo
from meshcast.proto.presence_pb2 import GatewayHeartbeat, QueryReply, QueryRequest
from meshcast.protocol import ErrorCode

from .errors import ApiError, internal

log = structlog.get_logger(__name__)

R = TypeVar("R", PositionReply, HistoryReply, RemoveReply)

# What a NATS call may raise when the bus is away or slow.
NATS_FAILURES: tuple[type[Exception], ...] = (NatsError, TimeoutError, ConnectionError)


class Bus:
    def __init__(
        self, nc: Nats, subjects: Subjects, timeout: float, scatter_wait: float, gateway_timeout: float = 15.0
    ) -> None:
        self.nc = nc
        self.subjects = subjects
        self.timeout = timeout
        self.scatter_wait = scatter_wait
        self._gateway_timeout = gateway_timeout
        self._gateways: dict[str, float] = {}

    async def watch_gateways(self) -> None:
        """Learn the live gateways from their presence heartbeats."""

        async def beat(msg: Msg) -> None:
            heartbeat = GatewayHeartbeat()
            try:
                heartbeat.ParseFromString(msg.data)
            except DecodeError:
                return
            if heartbeat.gateway:
                self._gateways[heartbeat.gateway] = time.monotonic()

        await self.nc.subscribe(self.subjects.presence_heartbeat, cb=beat)

    def live_gateways(self) -> set[str]:
        horizon = time.monotonic() - self._gateway_timeout
        for gone in [g for g, seen in self._gateways.items() if seen < horizon]:
            del self._gateways[gone]
        return set(self._gateways)

    async def history(self, method: str, request: Message, reply: R) -> R:
        """The history service's answer, or ApiError (its own code, else 100)."""
        try:
            msg = await self.nc.request(
                self.subjects.history_api(method), request.SerializeToString(), timeout=self.timeout
            )
            reply.ParseFromString(msg.data)
        except (NatsError, TimeoutError, ConnectionError, DecodeError) as exc:
            log.warning("history request failed", method=method, error=type(exc).__name__)
            raise internal("history unavailable") from exc
        if reply.HasField("error"):
            raise ApiError(reply.error.code, reply.error.message or "history failed")
        return reply

    async def presence(self, channel: str, stats_only: bool) -> list[QueryReply]:
        """Every part of the presence service's answer (a large one comes in several)."""
        parts: list[QueryReply] = []

        def last(msg: Msg) -> bool:
            part = QueryReply()
            try:
                part.ParseFromString(msg.data)
            except DecodeError:
                part.error.code = ErrorCode.INTERNAL
            parts.append(part)
            return not part.more or part.HasField("error")

        request = QueryRequest(channel=channel, stats_only=stats_only).SerializeToString()
        try:
            await request_many(self.nc, self.subjects.presence_query, request, last=last, wait=self.timeout)
        except NATS_FAILURES as exc:
            log.warning("presence request failed", error=type(exc).__name__)
            raise internal("presence unavailable") from exc
        for part in parts:
            if part.HasField("error"):
                raise ApiError(part.error.code or int(ErrorCode.INTERNAL), part.error.message or "presence failed")
        return parts

    async def _scatter(self, method: str, payload: bytes, on_reply: Callable[[Msg], str]) -> None:
        """Ask every gateway; collect until each live one answered, at most the scatter window.

        `on_reply` returns the answering gateway once its answer is complete ('' before)."""
        inbox = self.nc.new_inbox()
        expected = self.live_gateways()
        answered: set[str] = set()
        complete = asyncio.Event()

        async def collect(msg: Msg) -> None:
            try:
                node = on_reply(msg)
            except DecodeError:
                log.warning("bad scatter reply", method=method)
                return
            if node:
                answered.add(node)
                if expected and expected <= answered:
                    complete.set()

        try:
            sub = await self.nc.subscribe(inbox, cb=collect)
        except NATS_FAILURES as exc:
            raise internal() from exc
        try:
            await self.nc.publish(self.subjects.node_api(method), payload, reply=inbox)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(complete.wait(), self.scatter_wait)
        except NATS_FAILURES as exc:
            log.warning("scatter failed", method=method, error=type(exc).__name__)
            raise internal() from exc
        finally:
            try:
                await sub.unsubscribe()
            except NATS_FAILURES as exc:
                log.debug("scatter unsubscribe failed", error=type(exc).__name__)

    async def channels(self, pattern: str) -> dict[str, int]:
        """Channel -> subscribers, summed over every gateway that answered."""
        counts: dict[str, int] = {}

        def add(msg: Msg) -> str:
            reply = ChannelsReply()
            reply.ParseFromString(msg.data)
            for entry in reply.channels:
                counts[entry.channel] = counts.get(entry.channel, 0) + entry.num_clients
            return "" if reply.more else reply.node

        await self._scatter("channels", ChannelsRequest(pattern=pattern).SerializeToString(), add)
        return counts

    async def nodes(self) -> list[NodeInfo]:
        nodes: list[NodeInfo] = []

        def add(msg: Msg) -> str:
            node = NodeInfo()
            node.ParseFromString(msg.data)
            nodes.append(node)
            return node.uid

        await self._scatter("info", InfoRequest().SerializeToString(), add)
        return nodes
