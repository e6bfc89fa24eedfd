"""The local hub: which clients of this gateway are in which channel, and fan-out.

One NATS subscription per channel per gateway, made for the channel's first
local subscriber and dropped with its last. A message from NATS is decoded
once, encoded once per client format and framed once; publications that
arrive in the same event-loop turn are batched into one WebSocket message
per format. No task, buffer or copy per client: each subscriber gets the same
frame bytes.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog
from google.protobuf.message import DecodeError
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from meshcast.bus import Subjects
from meshcast.proto.bus_pb2 import Publication
from meshcast.proto.client_pb2 import ClientInfo
from meshcast.protocol import Format, join_pushes, publication_push, ws_frame

from . import metrics

if TYPE_CHECKING:
    from .client import Client

log = structlog.get_logger(__name__)


class _Channel:
    """Local subscribers of one channel, by format, and publications awaiting flush."""

    __slots__ = ("by_format", "name", "pending", "subscription")

    def __init__(self, name: str) -> None:
        self.name = name
        self.by_format: dict[Format, dict[Client, None]] = {Format.JSON: {}, Format.PROTOBUF: {}}
        self.subscription: Subscription | None = None
        self.pending: list[Publication] = []

    def __len__(self) -> int:
        return sum(len(c) for c in self.by_format.values())


class Hub:
    def __init__(self, nc: Nats, subjects: Subjects) -> None:
        self._nc = nc
        self._subjects = subjects
        self._channels: dict[str, _Channel] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.clients: dict[str, Client] = {}
        self._by_user: dict[str, dict[Client, None]] = {}
        self._loop = asyncio.get_running_loop()

    # Connections.

    def add_client(self, client: Client) -> None:
        self.clients[client.id] = client
        self._by_user.setdefault(client.user, {})[client] = None
        metrics.CONNECTIONS.inc()

    async def remove_client(self, client: Client) -> None:
        if self.clients.pop(client.id, None) is None:
            return
        metrics.CONNECTIONS.dec()
        users = self._by_user.get(client.user)
        if users is not None:
            users.pop(client, None)
            if not users:
                del self._by_user[client.user]
        for channel in list(client.channels):
            await self.unsubscribe(channel, client)

    def clients_of(self, user: str) -> list[Client]:
        return list(self._by_user.get(user, ()))

    # Channels.

    def channel_count(self) -> int:
        return len(self._channels)

    async def subscribe(self, channel: str, client: Client) -> None:
        """Add `client` to `channel`, subscribing on NATS for the first one."""
        async with self._lock(channel):
            entry = self._channels.get(channel)
            if entry is None:
                entry = _Channel(channel)
                entry.subscription = await self._nc.subscribe(
                    self._subjects.live(channel), cb=self._make_callback(entry)
                )
                # The server has the interest before the client hears "subscribed"
                # (other cluster nodes learn it over routes shortly after).
                await self._nc.flush()
                self._channels[channel] = entry
                metrics.CHANNELS.set(len(self._channels))
            entry.by_format[client.format][client] = None
            client.channels.add(channel)

    async def unsubscribe(self, channel: str, client: Client) -> None:
        """Remove `client` from `channel`; drop the NATS subscription with the last one."""
        client.channels.discard(channel)
        async with self._lock(channel):
            entry = self._channels.get(channel)
            if entry is None:
                return
            entry.by_format[client.format].pop(client, None)
            if len(entry):
                return
            del self._channels[channel]
            metrics.CHANNELS.set(len(self._channels))
            if entry.subscription is not None and not self._nc.is_closed:
                await entry.subscription.unsubscribe()
        self._locks.pop(channel, None)

    def _lock(self, channel: str) -> asyncio.Lock:
        lock = self._locks.get(channel)
        if lock is None:
            lock = self._locks[channel] = asyncio.Lock()
        return lock

    # Fan-out.

    def _make_callback(self, entry: _Channel):  # type: ignore[no-untyped-def]
        async def on_message(msg: Msg) -> None:
            pub = Publication()
            try:
                pub.ParseFromString(msg.data)
            except DecodeError:
                metrics.BAD_BUS_MESSAGES.inc()
                log.warning("bad publication on bus", subject=msg.subject)
                return
            if not entry.pending:
                self._loop.call_soon(self._flush, entry)
            entry.pending.append(pub)

        return on_message

    def _flush(self, entry: _Channel) -> None:
        pubs, entry.pending = entry.pending, []
        delivered = 0
        for fmt, clients in entry.by_format.items():
            if not clients:
                continue
            pushes = [_encode(fmt, entry.name, pub) for pub in pubs]
            frame = ws_frame(join_pushes(fmt, pushes), fmt.binary)
            # Client.write never changes these dicts: a slow client's removal
            # happens later, in its connection task.
            for client in clients:
                client.write(frame)
            delivered += len(clients)
        metrics.DELIVERIES.inc(delivered * len(pubs))
        metrics.BUS_MESSAGES.inc(len(pubs))


def _encode(fmt: Format, channel: str, pub: Publication) -> bytes:
    info = None
    if pub.HasField("info"):
        src = pub.info
        info = ClientInfo(user=src.user, client=src.client, conn_info=src.conn_info, chan_info=src.chan_info)
    return publication_push(fmt, channel, pub.data, info=info, tags=dict(pub.tags) if pub.tags else None)
