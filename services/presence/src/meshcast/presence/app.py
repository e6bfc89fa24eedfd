"""Composition root of the presence service: membership from gateways, queries, expiry."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from typing import Any

import structlog
from google.protobuf.message import DecodeError
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from meshcast.bus import Subjects, close, subscriptions_applied
from meshcast.common.health import HealthServer
from meshcast.common.service import connect_nats
from meshcast.proto.presence_pb2 import (
    GatewayHeartbeat,
    PresenceEvent,
    QueryReply,
    QueryRequest,
    SnapshotChunk,
    SyncRequest,
)

from . import metrics
from .settings import PresenceSettings
from .state import Expired, PresenceState

log = structlog.get_logger(__name__)

LEASE_BUCKET = "MESHCAST_PRESENCE_LEASES"


class PresenceApp:
    def __init__(self, settings: PresenceSettings) -> None:
        self.settings = settings
        self.subjects = Subjects(settings.subject_prefix)
        self.state = PresenceState()
        self._nc: Nats | None = None
        self._kv: KeyValue | None = None
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._syncing: set[str] = set()
        self._serving = False
        self._health = HealthServer(settings.health_host, settings.health_port, self.ready)

    def ready(self) -> bool:
        return self._serving and self._nc is not None and self._nc.is_connected

    @property
    def health_port(self) -> int:
        return self._health.port

    @property
    def nc(self) -> Nats:
        assert self._nc is not None
        return self._nc

    async def start(self) -> None:
        settings = self.settings
        self._nc = nc = await connect_nats(settings)
        js = nc.jetstream(timeout=settings.nats_timeout)
        try:
            self._kv = await js.create_key_value(
                bucket=LEASE_BUCKET, ttl=600, history=1, replicas=settings.lease_replicas
            )
        except Exception as exc:  # leases only dedupe announcements: run without them
            log.warning("lease bucket unavailable", error=str(exc))
        self._subs.append(await nc.subscribe(self.subjects.presence_events_wildcard(), cb=self._on_event))
        self._subs.append(await nc.subscribe(self.subjects.presence_heartbeat, cb=self._on_heartbeat))
        await self._sync(None, settings.startup_sync_wait)
        self._subs.append(
            await nc.subscribe(self.subjects.presence_query, queue=settings.queue_group, cb=self._on_query)
        )
        await subscriptions_applied(nc)  # the server routes queries here before we say we are ready
        self._spawn(self._sweep())
        await self._health.start()
        self._serving = True
        log.info(
            "presence started",
            gateways=len(self.state.gateways()),
            members=self.state.member_count(),
            health_port=self._health.port,
        )

    async def stop(self) -> None:
        self._serving = False
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._health.stop()
        if self._nc is not None:
            await close(self._nc, self.settings.nats_timeout)
        log.info("presence stopped")

    # Membership from gateways.

    async def _on_event(self, msg: Msg) -> None:
        event = PresenceEvent()
        try:
            event.ParseFromString(msg.data)
        except DecodeError:
            log.warning("bad presence event", subject=msg.subject)
            return
        if event.expired:
            return  # our own (or a peer's) report of a dead gateway
        metrics.EVENTS.labels(PresenceEvent.Kind.Name(event.kind).lower()).inc()
        if self.state.event(event, time.monotonic()):
            self._request_sync(event.gateway)
        metrics.MEMBERS.set(self.state.member_count())

    async def _on_heartbeat(self, msg: Msg) -> None:
        beat = GatewayHeartbeat()
        try:
            beat.ParseFromString(msg.data)
        except DecodeError:
            log.warning("bad gateway heartbeat")
            return
        if self.state.heartbeat(beat, time.monotonic()):
            self._request_sync(beat.gateway)

    def _request_sync(self, gateway: str) -> None:
        if gateway not in self._syncing:
            self._syncing.add(gateway)
            self._spawn(self._sync(gateway, self.settings.sync_timeout))

    async def _sync(self, gateway: str | None, wait: float) -> None:
        """Snapshots of one gateway, or of every gateway that answers within `wait`."""
        nc = self.nc
        inbox = nc.new_inbox()
        parts: dict[str, list[SnapshotChunk]] = {}
        done: set[str] = set()
        finished = asyncio.Event()

        async def on_chunk(msg: Msg) -> None:
            chunk = SnapshotChunk()
            try:
                chunk.ParseFromString(msg.data)
            except DecodeError:
                return
            parts.setdefault(chunk.gateway, []).append(chunk)
            if chunk.last:
                chunks = sorted(parts.pop(chunk.gateway), key=lambda c: c.index)
                members = [m for c in chunks for m in c.members]
                if self.state.snapshot(chunk.gateway, chunk.version, members, time.monotonic()):
                    self._request_sync(chunk.gateway)
                done.add(chunk.gateway)
                metrics.SYNCS.inc()
                if gateway is not None:
                    finished.set()

        sub = await nc.subscribe(inbox, cb=on_chunk)
        try:
            request = SyncRequest(max_members=self.settings.sync_chunk).SerializeToString()
            await nc.publish(self.subjects.presence_sync(gateway), request, reply=inbox)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), wait)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            if gateway is not None:
                self._syncing.discard(gateway)
                if gateway not in done:
                    log.warning("gateway snapshot did not arrive", gateway=gateway)
                    self.state.sync_failed(gateway)
            metrics.MEMBERS.set(self.state.member_count())

    # Expiry.

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval)
            for gone in self.state.expire(time.monotonic(), self.settings.gateway_timeout):
                log.info("gateway expired", gateway=gone.gateway, members=len(gone.members))
                metrics.EXPIRED_GATEWAYS.inc()
                await self._announce_leaves(gone)
            metrics.MEMBERS.set(self.state.member_count())

    async def _announce_leaves(self, gone: Expired) -> None:
        """Leave events for a dead gateway's members, sent by one presence instance only."""
        if self._kv is not None:
            try:
                await self._kv.create(f"expired.{gone.gateway}", str(gone.version).encode())
            except KeyWrongLastSequenceError:
                return  # another instance announces them
            except Exception as exc:  # KV unavailable: announcing twice beats not at all
                log.warning("lease unavailable", error=str(exc))
        now_ms = time.time_ns() // 1_000_000
        for member in gone.members:
            event = PresenceEvent(
                kind=PresenceEvent.LEAVE,
                channel=member.channel,
                info=member.info,
                gateway=gone.gateway,
                version=gone.version,
                expired=True,
                time_ms=now_ms,
            )
            await self.nc.publish(self.subjects.presence_events(member.channel), event.SerializeToString())

    # Queries.

    async def _on_query(self, msg: Msg) -> None:
        if not msg.reply:
            return
        request = QueryRequest()
        try:
            request.ParseFromString(msg.data)
        except DecodeError:
            reply = QueryReply()
            reply.error.code = 107
            reply.error.message = "bad request"
            await self.nc.publish(msg.reply, reply.SerializeToString())
            return
        metrics.QUERIES.labels("stats" if request.stats_only else "presence").inc()
        for reply in self._answer(request):
            await self.nc.publish(msg.reply, reply.SerializeToString())

    def _answer(self, request: QueryRequest) -> list[QueryReply]:
        """The answer, in parts that stay under NATS' message size."""
        members = self.state.channel(request.channel)
        clients, users = len(members.clients), len(members.users)
        if request.stats_only or not members.encoded:
            return [QueryReply(num_clients=clients, num_users=users)]
        size = request.max_clients or self.settings.query_chunk
        encoded = list(members.encoded.values())
        parts = [encoded[i : i + size] for i in range(0, len(encoded), size)]
        return [
            QueryReply(
                proto_members=b"".join(e.proto for e in part),
                json_members=b",".join(e.json for e in part),
                more=n < len(parts) - 1,
                num_clients=clients,
                num_users=users,
            )
            for n, part in enumerate(parts)
        ]

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
