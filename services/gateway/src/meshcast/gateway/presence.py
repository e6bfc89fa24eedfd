"""This gateway's side of presence: its members, their events, heartbeats and snapshots.

Members are kept per presence-enabled channel. Every change is numbered
(`version`) and published as a `PresenceEvent`; a heartbeat carries the
number and the member count so presence instances notice what they missed
and ask for a snapshot, which is answered in chunks. The gateway's `id` is
new with every process, so a restarted gateway never inherits members.

Epochs (see presence.proto): presence may expire this gateway while it is
away (its process stopped, its NATS link down) and announce its members'
leaves; the events service then announces every connection of it as ended.
What it had not sent by then must never go out, or subscribers would be told
twice. So after a lapse (nothing sent for two heartbeat intervals) the sender
asks before anything else, with its heartbeat as a request, and until then
the epoch is not `standing` (the gateway's lifecycle events wait too); when
the answer, or a snapshot request's `expired_epoch`, says the epoch expired,
the gateway drops that epoch's unsent events, forgets its members (their
leaves were announced) and calls `on_expired`: the app closes every
connection, whose clients come back as new connections and members. Either
way the next epoch begins, so a later expiry is decided afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable

import structlog
from google.protobuf.message import DecodeError
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from meshcast.bus import Subjects
from meshcast.bus.requests import in_parts, is_inbox, reply_limit
from meshcast.proto.bus_pb2 import Publisher
from meshcast.proto.presence_pb2 import (
    GatewayHeartbeat,
    HeartbeatReply,
    Member,
    PresenceEvent,
    SnapshotChunk,
    SyncRequest,
)

log = structlog.get_logger(__name__)
# At stop: how long the leaves of the drained clients may take to go out.
LEAVES_FLUSH_SECONDS = 2.0

# Bytes of a snapshot chunk's framing around each member.
MEMBER_OVERHEAD = 8


class LocalPresence:
    """Members on this gateway (no I/O): events and snapshots to publish."""

    def __init__(self, gateway_id: str) -> None:
        self.id = gateway_id
        self.epoch = 1
        self.version = 0
        self._members: dict[str, dict[str, Publisher]] = {}
        # Events of epochs below this one were expired: they are never sent.
        self._first_live_epoch = 1

    def count(self) -> int:
        return sum(len(m) for m in self._members.values())

    def join(self, channel: str, info: Publisher) -> PresenceEvent:
        self._members.setdefault(channel, {})[info.client] = info
        return self._event(PresenceEvent.JOIN, channel, info)

    def leave(self, channel: str, client: str) -> PresenceEvent | None:
        members = self._members.get(channel)
        info = members.pop(client, None) if members is not None else None
        if info is None:
            return None
        if not members:
            del self._members[channel]
        return self._event(PresenceEvent.LEAVE, channel, info)

    def forget_members(self) -> None:
        """Drop every member without an event (presence announced them all leaving)."""
        self._members.clear()

    def next_epoch(self, expired: bool) -> list[PresenceEvent]:
        """Start the next epoch; after an expired one, every member's join (presence
        announced them all leaving)."""
        self.epoch += 1
        if not expired:
            return []
        self._first_live_epoch = self.epoch
        return [self._event(PresenceEvent.JOIN, c, i) for c, clients in self._members.items() for i in clients.values()]

    def sendable(self, event: PresenceEvent) -> bool:
        """Whether `event` may still go out: not when presence expired its epoch
        (it announced every member leaving; the next epoch's joins tell the rest)."""
        return event.epoch >= self._first_live_epoch

    def _event(self, kind: PresenceEvent.Kind.ValueType, channel: str, info: Publisher) -> PresenceEvent:
        self.version += 1
        return PresenceEvent(
            kind=kind,
            channel=channel,
            info=info,
            gateway=self.id,
            version=self.version,
            epoch=self.epoch,
            time_ms=time.time_ns() // 1_000_000,
        )

    def heartbeat(self) -> GatewayHeartbeat:
        return GatewayHeartbeat(gateway=self.id, version=self.version, members=self.count(), epoch=self.epoch)

    def snapshot(self, max_members: int, max_bytes: int = 1 << 30) -> list[SnapshotChunk]:
        """Every member, in chunks of at most `max_members` members and `max_bytes` bytes of them."""
        size = max(1, max_members)
        members = [Member(channel=c, info=i) for c, clients in self._members.items() for i in clients.values()]
        chunks = [
            part[i : i + size]
            for part in in_parts(members, lambda m: m.ByteSize() + MEMBER_OVERHEAD, max_bytes)
            for i in range(0, max(len(part), 1), size)
        ]
        return [
            SnapshotChunk(
                gateway=self.id,
                version=self.version,
                epoch=self.epoch,
                index=n,
                last=n == len(chunks) - 1,
                members=part,
            )
            for n, part in enumerate(chunks)
        ]


class PresenceReporter:
    """Publishes this gateway's presence to NATS and answers snapshot requests."""

    def __init__(
        self,
        nc: Nats,
        subjects: Subjects,
        heartbeat_interval: float,
        max_reply_bytes: int = 1 << 20,
        *,
        on_expired: Callable[[int], None] | None = None,
    ) -> None:
        self.local = LocalPresence(str(uuid.uuid4()))
        self._on_expired = on_expired
        self._nc = nc
        self._max_reply_bytes = max_reply_bytes
        self._subjects = subjects
        self._interval = heartbeat_interval
        # Silent this long (a stopped process, a NATS outage): ask before sending on.
        self._lapse_after = 2 * heartbeat_interval
        self._resume_timeout = max(1.0, heartbeat_interval)
        self._last_sent = time.monotonic()
        self._subs: list[Subscription] = []
        self._tasks: list[asyncio.Task[None]] = []
        # Events leave in the order they happened, from one sender; heartbeats
        # queue behind them, so a beat never announces a version whose events
        # are still waiting here.
        self._outbox: asyncio.Queue[PresenceEvent | None] = asyncio.Queue()

    async def start(self) -> None:
        for subject in (self._subjects.presence_sync(), self._subjects.presence_sync(self.local.id)):
            self._subs.append(await self._nc.subscribe(subject, cb=self._on_sync))
        self._last_sent = time.monotonic()
        self._tasks = [asyncio.create_task(self._beat()), asyncio.create_task(self._send())]

    async def stop(self) -> None:
        """Send what is queued (leaves of drained clients), then stop."""
        if not self._nc.is_closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox.join(), LEAVES_FLUSH_SECONDS)
        for task in self._tasks:
            task.cancel()
        for sub in self._subs:
            if not self._nc.is_closed:
                with contextlib.suppress(NatsError):
                    await sub.unsubscribe()

    def standing(self) -> bool:
        """Whether this gateway's epoch surely stands: connected, and heard from within
        the lapse window (presence expires only a gateway silent for longer)."""
        return self._nc.is_connected and time.monotonic() - self._last_sent <= self._lapse_after

    def joined(self, channel: str, info: Publisher) -> None:
        self._outbox.put_nowait(self.local.join(channel, info))

    def left(self, channel: str, client: str) -> None:
        event = self.local.leave(channel, client)
        if event is not None:
            self._outbox.put_nowait(event)

    async def _send(self) -> None:
        while True:
            event = await self._outbox.get()
            try:
                await self._connected()
                if time.monotonic() - self._last_sent > self._lapse_after:
                    await self._resume()
                if event is None:
                    beat = self.local.heartbeat().SerializeToString()
                    await self._nc.publish(self._subjects.presence_heartbeat, beat)
                    self._last_sent = time.monotonic()
                elif self.local.sendable(event):
                    await self._nc.publish(self._subjects.presence_events(event.channel), event.SerializeToString())
                    self._last_sent = time.monotonic()
            except NatsError as exc:
                # Presence instances find a lost event by the version and ask for a snapshot.
                log.warning("presence message not sent", error=type(exc).__name__)
            finally:
                self._outbox.task_done()

    async def _connected(self) -> None:
        """Wait while NATS is down (what is published meanwhile would go out late, unasked)."""
        # The connection's reconnect callbacks belong to the gateway app: poll its state.
        while not self._nc.is_connected and not self._nc.is_closed:  # noqa: ASYNC110
            await asyncio.sleep(min(self._interval, 0.1))

    async def _resume(self) -> None:
        """Back from a lapse: ask presence whether this epoch was expired meanwhile."""
        reply = HeartbeatReply()
        beat = self.local.heartbeat()
        for _ in range(3):
            try:
                msg = await self._nc.request(
                    self._subjects.presence_heartbeat, beat.SerializeToString(), timeout=self._resume_timeout
                )
            except TimeoutError:
                continue
            except NatsError as exc:  # no presence instance: nobody expired anything
                log.warning("presence not asked after a lapse", error=type(exc).__name__)
                return
            try:
                reply.ParseFromString(msg.data)
            except DecodeError:
                continue
            self._last_sent = time.monotonic()
            self._end_epoch(beat.epoch, reply.expired)
            return
        log.warning("presence did not answer after a lapse", epoch=self.local.epoch)

    def _end_epoch(self, epoch: int, expired: bool) -> None:
        """End `epoch` (unless that is done: the answer and a snapshot request may both
        tell) and start the next; after an expired one, what was not sent stays unsent
        and every member is announced again."""
        if epoch != self.local.epoch:
            return
        log.info("presence epoch ends", gateway=self.local.id, epoch=epoch, expired=expired)
        if expired:
            # Declared dead: its members' leaves were announced, its connections close.
            self.local.forget_members()
            if self._on_expired is not None:
                try:
                    self._on_expired(epoch)
                except Exception:
                    log.exception("expiry callback failed", epoch=epoch)
        for join in self.local.next_epoch(expired):
            self._outbox.put_nowait(join)

    async def _beat(self) -> None:
        while True:
            self._outbox.put_nowait(None)
            await asyncio.sleep(self._interval)

    async def _on_sync(self, msg: Msg) -> None:
        request = SyncRequest()
        try:
            request.ParseFromString(msg.data)
        except DecodeError:
            return
        if not is_inbox(msg.reply):
            log.warning("snapshot request refused: reply is not an inbox", reply=msg.reply[:100])
            return
        if request.expired_epoch:
            self._end_epoch(request.expired_epoch, expired=True)
        limit = reply_limit(self._nc, self._max_reply_bytes)
        for chunk in self.local.snapshot(request.max_members or 1000, limit):
            await self._nc.publish(msg.reply, chunk.SerializeToString())
