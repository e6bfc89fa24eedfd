"""Composition root of the presence service: membership from gateways, queries, expiry.

How a gateway's epoch ends is decided once, for every instance, by one key
per (gateway, epoch) in the lease bucket (`Subjects.presence_lease`): the
first to create it wins. The sweep writes `expired` (and announces the
leaves if it won); a gateway back from a lapse asks with its heartbeat as a
request, and the instance that sees it writes `resumed`. Each instance acts
on whatever the key holds, so they agree, and neither the leaves nor the
gateway's own announcements are told twice (see `state`).

An epoch that expired is also told to the events stream, as a
`gateway_expired` event (``Nats-Msg-Id`` ``gateway_expired:<gateway>:<epoch>``)
by every instance that sees it expire, so it is stored once even when the
one that won the lease dies before telling: the events service then announces
the end of every connection and subscription of that gateway it knows of.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Coroutine
from typing import Any

import structlog
from google.protobuf.message import DecodeError
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js.api import PubAck
from nats.js.errors import Error as JetStreamError
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from opentelemetry.trace import SpanKind
from opentelemetry.util.types import AttributeValue

from meshcast.bus import Subjects, close, subscriptions_applied
from meshcast.bus.requests import in_parts, is_inbox, reply_limit
from meshcast.bus.retry import retrying, until_ready
from meshcast.common.health import HealthServer
from meshcast.common.node import NodeInfoResponder, node_name
from meshcast.common.service import connect_nats
from meshcast.common.telemetry import DESTINATION, MESSAGING_SYSTEM, TRACEPARENT, extract, tracer, tracing_enabled
from meshcast.proto.events_pb2 import Event, GatewayExpired
from meshcast.proto.presence_pb2 import (
    GatewayHeartbeat,
    HeartbeatReply,
    PresenceEvent,
    QueryReply,
    QueryRequest,
    SnapshotChunk,
    SyncRequest,
)
from meshcast.protocol import ErrorCode

from . import metrics
from .settings import PresenceSettings
from .state import Epoch, Expired, Need, PresenceState

log = structlog.get_logger(__name__)

LEASE_BUCKET = "MESHCAST_PRESENCE_LEASES"
LEASE_TTL = 600.0  # seconds a decision stays in the lease bucket
EXPIRED = b"expired"
# Retries of a gateway expiry into the events stream, at most this far apart.
EVENTS_RETRY_MAX_DELAY = 10.0
RESUMED = b"resumed"


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
        self._resync: set[str] = set()
        self._serving = False
        self._health = HealthServer(settings.health_host, settings.health_port, self.ready)

    def ready(self) -> bool:
        return self._serving and self._nc is not None and self._nc.is_connected

    def leases_ready(self) -> bool:
        """The lease bucket is in use (made once JetStream could)."""
        return self._kv is not None

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
        # Leases only dedupe announcements: run without them until JetStream can make the
        # bucket (a cluster still forming its quorum), then use it.
        self._spawn(self._lease_bucket())
        self._subs.append(await nc.subscribe(self.subjects.presence_events_wildcard(), cb=self._on_event))
        self._subs.append(await nc.subscribe(self.subjects.presence_heartbeat, cb=self._on_heartbeat))
        await self._sync(None, settings.startup_sync_wait)
        self._subs.append(
            await nc.subscribe(self.subjects.presence_query, queue=settings.queue_group, cb=self._on_query)
        )
        await NodeInfoResponder(nc, self.subjects, node_name("presence", settings.node_name)).start()
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

    async def _lease_bucket(self) -> None:
        js = self.nc.jetstream(timeout=self.settings.nats_timeout)
        replicas = self.settings.lease_replicas

        def create() -> Awaitable[KeyValue]:
            return js.create_key_value(bucket=LEASE_BUCKET, ttl=LEASE_TTL, history=1, replicas=replicas)

        try:
            self._kv = await until_ready(create, what="presence lease bucket")
        except Exception as exc:  # a bucket of another config, say: say so, and run without
            log.error("lease bucket unusable", bucket=LEASE_BUCKET, error=str(exc))

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
        self._act(event.gateway, self.state.event(event, time.monotonic()))
        metrics.MEMBERS.set(self.state.member_count())

    async def _on_heartbeat(self, msg: Msg) -> None:
        beat = GatewayHeartbeat()
        try:
            beat.ParseFromString(msg.data)
        except DecodeError:
            log.warning("bad gateway heartbeat")
            return
        if msg.reply:
            if not is_inbox(msg.reply):
                metrics.REFUSED_REPLIES.inc()
                log.warning("resume refused: reply is not an inbox", reply=msg.reply[:100])
                return
            self._spawn(self._answer_resume(beat, msg.reply))
            return
        self._act(beat.gateway, self.state.heartbeat(beat, time.monotonic()))

    async def _answer_resume(self, beat: GatewayHeartbeat, reply: str) -> None:
        """A gateway back from a lapse asks whether its epoch still stands."""
        if self.state.is_ended(beat.gateway, beat.epoch):
            expired = True
        else:
            outcome, _ = await self._decide(Epoch(beat.gateway, beat.epoch), RESUMED)
            expired = outcome == EXPIRED
        now = time.monotonic()
        if expired:
            self.state.end(beat.gateway, beat.epoch, now)  # its leaves were announced when it expired
        else:
            self.state.resumed(beat.gateway, beat.epoch, now)
            self._act(beat.gateway, self.state.heartbeat(beat, now))
        log.info("gateway resumed", gateway=beat.gateway, epoch=beat.epoch, expired=expired)
        with contextlib.suppress(NatsError):
            await self.nc.publish(reply, HeartbeatReply(expired=expired).SerializeToString())

    def _act(self, gateway: str, need: Need) -> None:
        if need is Need.SNAPSHOT:
            self._request_sync(gateway)
        elif need is Need.TELL_EXPIRED:
            self._request_sync(gateway, tell_expired=True)

    def _request_sync(self, gateway: str, tell_expired: bool = False) -> None:
        if gateway in self._syncing:
            self._resync.add(gateway)  # again once the one in flight is done
            return
        self._syncing.add(gateway)
        expired_epoch = self.state.ended_epoch(gateway) if tell_expired else 0
        self._spawn(self._sync(gateway, self.settings.sync_timeout, expired_epoch))

    async def _sync(self, gateway: str | None, wait: float, expired_epoch: int = 0) -> None:
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
                now = time.monotonic()
                if self.state.snapshot(chunk.gateway, chunk.epoch, chunk.version, members, now) is Need.SNAPSHOT:
                    self._request_sync(chunk.gateway)
                # Still of an ended epoch: the gateway is told again with its next message, not at once.
                done.add(chunk.gateway)
                metrics.SYNCS.inc()
                if gateway is not None:
                    finished.set()

        sub = await nc.subscribe(inbox, cb=on_chunk)
        try:
            request = SyncRequest(max_members=self.settings.sync_chunk, expired_epoch=expired_epoch)
            await nc.publish(self.subjects.presence_sync(gateway), request.SerializeToString(), reply=inbox)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), wait)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            if gateway is not None:
                self._syncing.discard(gateway)
                again = gateway in self._resync
                self._resync.discard(gateway)
                if gateway not in done:
                    log.warning("gateway snapshot did not arrive", gateway=gateway)
                    self.state.sync_failed(gateway)
                elif again:
                    self._request_sync(gateway, tell_expired=self.state.ended_epoch(gateway) > 0)
            metrics.MEMBERS.set(self.state.member_count())

    # Expiry.

    async def _sweep(self) -> None:
        interval, timeout = self.settings.sweep_interval, self.settings.gateway_timeout
        # A sweep this late means this instance stopped (or starved) for a while:
        # heartbeats may be waiting unread, so the silence proves nothing.
        lapse = max(2 * interval, timeout / 2)
        last = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            lapsed, last = now - last > lapse, now
            if lapsed or not self.nc.is_connected:
                log.info("presence lapsed: gateways count as seen", lapsed=lapsed, connected=self.nc.is_connected)
                self.state.refresh(now)
                continue
            for due in self.state.due(now, timeout):
                await self._expire(due)
            self.state.forget_ended(now, LEASE_TTL)
            metrics.MEMBERS.set(self.state.member_count())

    async def _expire(self, due: Epoch) -> None:
        outcome, decided_here = await self._decide(due, EXPIRED)
        now = time.monotonic()
        if outcome == RESUMED:
            self.state.resumed(due.gateway, due.epoch, now)
            return
        if self.settings.events_enabled:
            self._spawn(self._tell_events(due))
        gone = self.state.end(due.gateway, due.epoch, now)
        if gone is None:
            return
        log.info("gateway expired", gateway=gone.gateway, epoch=gone.epoch, members=len(gone.members))
        metrics.EXPIRED_GATEWAYS.inc()
        if decided_here:
            await self._announce_leaves(gone)

    async def _decide(self, epoch: Epoch, outcome: bytes) -> tuple[bytes, bool]:
        """How `epoch` ended, decided once for every instance: `outcome` when this call
        is the first to say (True), or what the first one said (False)."""
        if self._kv is None:
            return outcome, True
        key = self.subjects.presence_lease(epoch.gateway, epoch.epoch)
        try:
            await self._kv.create(key, outcome)
            return outcome, True
        except KeyWrongLastSequenceError:
            pass
        except (NatsError, JetStreamError) as exc:  # KV unavailable: announcing twice beats not at all
            log.warning("lease unavailable", error=str(exc))
            return outcome, True
        try:
            entry = await self._kv.get(key)
        except (NatsError, JetStreamError) as exc:
            log.warning("lease unreadable", error=str(exc))
            return outcome, True
        return entry.value or outcome, False

    async def _tell_events(self, due: Epoch) -> None:
        """Store `gateway_expired` for `due` in the events stream (see the module docstring)."""
        event = Event(
            time_ms=time.time_ns() // 1_000_000,
            gateway=due.gateway,
            epoch=due.epoch,
            source=Event.PRESENCE,
            gateway_expired=GatewayExpired(),
        )
        settings = self.settings
        js = self.nc.jetstream(timeout=settings.nats_timeout)
        body, headers = event.SerializeToString(), {"Nats-Msg-Id": f"gateway_expired:{due.gateway}:{due.epoch}"}

        def attempt(timeout: float) -> Awaitable[PubAck]:
            return js.publish(self.subjects.event("gateway_expired"), body, timeout=timeout, headers=headers)

        try:
            # Patiently (the events service may be starting or electing), and quietly.
            await retrying(
                attempt,
                what="gateway expiry",
                deadline=settings.events_publish_deadline,
                attempt_timeout=settings.nats_timeout,
                max_delay=EVENTS_RETRY_MAX_DELAY,
            )
        except (NatsError, JetStreamError, TimeoutError) as exc:
            metrics.EVENTS_NOT_TOLD.inc()
            log.warning("gateway expiry not stored in the events stream", gateway=due.gateway, error=str(exc))

    async def _announce_leaves(self, gone: Expired) -> None:
        """Leave events for an expired epoch's members."""
        now_ms = time.time_ns() // 1_000_000
        for member in gone.members:
            event = PresenceEvent(
                kind=PresenceEvent.LEAVE,
                channel=member.channel,
                info=member.info,
                gateway=gone.gateway,
                version=gone.version,
                epoch=gone.epoch,
                expired=True,
                time_ms=now_ms,
            )
            await self.nc.publish(self.subjects.presence_events(member.channel), event.SerializeToString())

    # Queries.

    async def _on_query(self, msg: Msg) -> None:
        if not is_inbox(msg.reply):
            metrics.REFUSED_REPLIES.inc()
            log.warning("query refused: reply is not an inbox", reply=msg.reply[:100])
            return
        request = QueryRequest()
        try:
            request.ParseFromString(msg.data)
        except DecodeError:
            reply = QueryReply()
            reply.error.code = ErrorCode.BAD_REQUEST
            reply.error.message = ErrorCode.BAD_REQUEST.message
            await self.nc.publish(msg.reply, reply.SerializeToString())
            return
        kind = "stats" if request.stats_only else "presence"
        metrics.QUERIES.labels(kind).inc()
        if not tracing_enabled() or not msg.headers or TRACEPARENT not in msg.headers:
            await self._send_answer(msg.reply, request)
            return
        attributes: dict[str, AttributeValue] = {DESTINATION: request.channel, MESSAGING_SYSTEM: "nats"}
        parent = extract(msg.headers)
        name = f"meshcast.presence.{kind}"
        with tracer.start_as_current_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes):
            await self._send_answer(msg.reply, request)

    async def _send_answer(self, reply_to: str, request: QueryRequest) -> None:
        for reply in self._answer(request):
            await self.nc.publish(reply_to, reply.SerializeToString())

    def _answer(self, request: QueryRequest) -> list[QueryReply]:
        """The answer, in parts that stay under NATS' message size."""
        members = self.state.channel(request.channel)
        clients, users = len(members.clients), len(members.users)
        if request.stats_only or not members.encoded:
            return [QueryReply(num_clients=clients, num_users=users)]
        size = request.max_clients or self.settings.query_chunk
        limit = reply_limit(self.nc, self.settings.max_reply_bytes)
        parts = [
            part[i : i + size]
            for part in in_parts(list(members.encoded.values()), lambda e: len(e.proto) + len(e.json) + 1, limit)
            for i in range(0, len(part), size)
        ]
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
