"""The API's requests on the bus: the history and presence services, and the
scatter-gathers: ``<p>.node.v1.channels`` (every gateway answers) and
``<p>.node.v1.info`` (every gateway and every service, `meshcast.common.node`).

A scatter-gather ends when every live gateway answered (the gateways the
presence heartbeats, or an earlier ``channels`` answer, named within
`gateway_timeout`), else when the scatter window is over: a gateway that died
or is slow costs at most the window. Until the API has listened for
`gateway_timeout` it cannot know every gateway, so its scatters wait out the
whole window. Services are not counted: ``info`` gives them `SERVICES_WAIT`
(they answer at once on a healthy bus).

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

from meshcast.bus import Subjects, trace_headers
from meshcast.bus.requests import presence_parts
from meshcast.common.telemetry import tracing_enabled
from meshcast.proto.history_pb2 import HistoryReply, PositionReply, RemoveReply
from meshcast.proto.node_pb2 import ChannelsReply, ChannelsRequest, InfoRequest, NodeInfo
from meshcast.proto.presence_pb2 import GatewayHeartbeat, QueryReply
from meshcast.protocol import ErrorCode

from .errors import ApiError, internal

log = structlog.get_logger(__name__)

R = TypeVar("R", PositionReply, HistoryReply, RemoveReply)

# How long `info` waits at least, for the services' answers.
SERVICES_WAIT = 0.1

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
        self._listening_since: float | None = None

    async def watch_gateways(self) -> None:
        """Learn the live gateways from their presence heartbeats."""

        async def beat(msg: Msg) -> None:
            heartbeat = GatewayHeartbeat()
            try:
                heartbeat.ParseFromString(msg.data)
            except DecodeError:
                return
            if heartbeat.gateway:
                self._heard(heartbeat.gateway)

        await self.nc.subscribe(self.subjects.presence_heartbeat, cb=beat)
        self._listening_since = time.monotonic()

    def live_gateways(self) -> set[str]:
        """The gateways heard from within `gateway_timeout`; empty (unknown: wait
        the whole window) until the API has listened that long."""
        now = time.monotonic()
        horizon = now - self._gateway_timeout
        for gone in [g for g, seen in self._gateways.items() if seen < horizon]:
            del self._gateways[gone]
        if self._listening_since is None or self._listening_since > horizon:
            return set()
        return set(self._gateways)

    def _heard(self, gateway: str) -> None:
        self._gateways[gateway] = time.monotonic()

    async def history(self, method: str, request: Message, reply: R) -> R:
        """The history service's answer, or ApiError (its own code, else 100)."""
        try:
            # With tracing on, the history service's span joins the call's trace.
            headers = (trace_headers() or None) if tracing_enabled() else None
            msg = await self.nc.request(
                self.subjects.history_api(method), request.SerializeToString(), timeout=self.timeout, headers=headers
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
        try:
            parts = await presence_parts(self.nc, self.subjects, channel, stats_only=stats_only, wait=self.timeout)
        except NATS_FAILURES as exc:
            log.warning("presence request failed", error=type(exc).__name__)
            raise internal("presence unavailable") from exc
        for part in parts:
            if part.HasField("error"):
                raise ApiError(part.error.code or int(ErrorCode.INTERNAL), part.error.message or "presence failed")
        return parts

    async def _scatter(
        self,
        subject: str,
        payload: bytes,
        on_reply: Callable[[Msg], str],
        *,
        expected: set[str],
        wait: float,
        at_least: float = 0.0,
    ) -> None:
        """Publish to `subject` with an inbox; collect for `at_least` seconds and until
        every `expected` responder answered (never, when none is expected), at most
        `wait` seconds.

        `on_reply` returns the responder once its answer is complete ('' before)."""
        inbox = self.nc.new_inbox()
        answered: set[str] = set()
        complete = asyncio.Event()

        async def collect(msg: Msg) -> None:
            try:
                node = on_reply(msg)
            except (DecodeError, ValueError, KeyError, TypeError):
                log.warning("bad scatter reply", subject=subject)
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
            await self.nc.publish(subject, payload, reply=inbox)
            started = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(complete.wait(), wait)
            rest = min(at_least, wait) - (time.monotonic() - started)
            if rest > 0:
                await asyncio.sleep(rest)
        except NATS_FAILURES as exc:
            log.warning("scatter failed", subject=subject, error=type(exc).__name__)
            raise internal() from exc
        finally:
            try:
                await sub.unsubscribe()
            except NATS_FAILURES as exc:
                log.debug("scatter unsubscribe failed", error=type(exc).__name__)

    async def _ask_gateways(
        self, method: str, payload: bytes, on_reply: Callable[[Msg], str], at_least: float = 0.0
    ) -> None:
        """Ask every gateway; done once each live one answered, at most the scatter window."""
        subject = self.subjects.node_api(method)
        expected = self.live_gateways()
        await self._scatter(subject, payload, on_reply, expected=expected, wait=self.scatter_wait, at_least=at_least)

    async def channels(self, pattern: str) -> dict[str, int]:
        """Channel -> subscribers, summed over every gateway that answered."""
        counts: dict[str, int] = {}

        def add(msg: Msg) -> str:
            reply = ChannelsReply()
            reply.ParseFromString(msg.data)
            for entry in reply.channels:
                counts[entry.channel] = counts.get(entry.channel, 0) + entry.num_clients
            if reply.more:
                return ""
            self._heard(reply.node)  # only gateways answer `channels`
            return reply.node

        await self._ask_gateways("channels", ChannelsRequest(pattern=pattern).SerializeToString(), add)
        return counts

    async def nodes(self) -> list[NodeInfo]:
        """Every gateway and service that answered ``info`` (this API replica too)."""
        nodes: dict[str, NodeInfo] = {}

        def add(msg: Msg) -> str:
            node = NodeInfo()
            node.ParseFromString(msg.data)
            nodes[node.uid] = node
            return node.uid

        await self._ask_gateways("info", InfoRequest().SerializeToString(), add, at_least=SERVICES_WAIT)
        return list(nodes.values())
