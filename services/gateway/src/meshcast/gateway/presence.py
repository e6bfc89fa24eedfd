"""This gateway's side of presence: its members, their events, heartbeats and snapshots.

Members are kept per presence-enabled channel. Every change is numbered
(`version`) and published as a `PresenceEvent`; a heartbeat carries the
number and the member count so presence instances notice what they missed
and ask for a snapshot, which is answered in chunks. The gateway's `id` is
new with every process, so a restarted gateway never inherits members.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import structlog
from google.protobuf.message import DecodeError
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from meshcast.bus import Subjects
from meshcast.proto.bus_pb2 import Publisher
from meshcast.proto.presence_pb2 import GatewayHeartbeat, Member, PresenceEvent, SnapshotChunk, SyncRequest

log = structlog.get_logger(__name__)


class LocalPresence:
    """Members on this gateway (no I/O): events and snapshots to publish."""

    def __init__(self, gateway_id: str) -> None:
        self.id = gateway_id
        self.version = 0
        self._members: dict[str, dict[str, Publisher]] = {}

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

    def _event(self, kind: PresenceEvent.Kind.ValueType, channel: str, info: Publisher) -> PresenceEvent:
        self.version += 1
        return PresenceEvent(
            kind=kind,
            channel=channel,
            info=info,
            gateway=self.id,
            version=self.version,
            time_ms=time.time_ns() // 1_000_000,
        )

    def heartbeat(self) -> GatewayHeartbeat:
        return GatewayHeartbeat(gateway=self.id, version=self.version, members=self.count())

    def snapshot(self, max_members: int) -> list[SnapshotChunk]:
        size = max(1, max_members)
        members = [Member(channel=c, info=i) for c, clients in self._members.items() for i in clients.values()]
        chunks = [members[i : i + size] for i in range(0, len(members), size)] or [[]]
        return [
            SnapshotChunk(gateway=self.id, version=self.version, index=n, last=n == len(chunks) - 1, members=part)
            for n, part in enumerate(chunks)
        ]


class PresenceReporter:
    """Publishes this gateway's presence to NATS and answers snapshot requests."""

    def __init__(self, nc: Nats, subjects: Subjects, heartbeat_interval: float) -> None:
        self.local = LocalPresence(str(uuid.uuid4()))
        self._nc = nc
        self._subjects = subjects
        self._interval = heartbeat_interval
        self._subs: list[Subscription] = []
        self._tasks: list[asyncio.Task[None]] = []
        # Events leave in the order they happened, from one sender; heartbeats
        # queue behind them, so a beat never announces a version whose events
        # are still waiting here.
        self._outbox: asyncio.Queue[PresenceEvent | None] = asyncio.Queue()

    async def start(self) -> None:
        for subject in (self._subjects.presence_sync(), self._subjects.presence_sync(self.local.id)):
            self._subs.append(await self._nc.subscribe(subject, cb=self._on_sync))
        self._tasks = [asyncio.create_task(self._beat()), asyncio.create_task(self._send())]

    async def stop(self) -> None:
        """Send what is queued (leaves of drained clients), then stop."""
        if not self._nc.is_closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox.join(), 2)
        for task in self._tasks:
            task.cancel()
        for sub in self._subs:
            if not self._nc.is_closed:
                with contextlib.suppress(NatsError):
                    await sub.unsubscribe()

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
                if event is None:
                    beat = self.local.heartbeat().SerializeToString()
                    await self._nc.publish(self._subjects.presence_heartbeat, beat)
                else:
                    await self._nc.publish(self._subjects.presence_events(event.channel), event.SerializeToString())
            except NatsError as exc:
                # Presence instances find a lost event by the version and ask for a snapshot.
                log.warning("presence message not sent", error=type(exc).__name__)
            finally:
                self._outbox.task_done()

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
        if not msg.reply:
            return
        for chunk in self.local.snapshot(request.max_members or 1000):
            await self._nc.publish(msg.reply, chunk.SerializeToString())
