"""What a backend asks of Meshcast over NATS, as the server API does it over HTTP.

Each call is a translation to the documented bus subjects
(``meshcast.bus.subjects``), the same one ``services/api`` makes:

- publish/broadcast: the channel's live subject (core NATS), or its input
  subject in a namespace with history (a JetStream publish, acknowledged once
  stored, retried through a stream election and stored once per key);
- disconnect/subscribe_user/unsubscribe_user: one ``meshcast.bus.v1.Control``
  on ``<p>.control``, which every gateway applies to the connections it holds;
- presence/presence_stats: the presence service's query;
- history: the history service's request.

Every call is bounded by `Bus.timeout`. A subject NATS refuses raises
`PermissionDenied` naming it; silence raises `Unavailable`; a service's own
error code raises `RequestFailed`.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError
from nats.aio.client import Client as Nats
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError

from meshcast.bus import Subjects, namespace_of
from meshcast.bus import publish as bus_publish
from meshcast.bus.requests import presence_parts
from meshcast.proto import client_pb2
from meshcast.proto.bus_pb2 import Control, DisconnectUser, SubscribeUser, UnsubscribeUser
from meshcast.proto.history_pb2 import HistoryReply, HistoryRequest
from meshcast.proto.presence_pb2 import QueryReply

from .errors import PermissionDenied, RequestFailed, Unavailable
from .permissions import Violations
from .types import ClientInfo, HistoryPage, PresenceStats, Publication

# What a NATS call may raise when the bus is away, slow or refuses.
NATS_FAILURES: tuple[type[Exception], ...] = (NatsError, JetStreamError, TimeoutError, ConnectionError)


@dataclass
class Bus:
    """One backend's NATS connection and what its calls need to know."""

    nc: Nats
    subjects: Subjects
    violations: Violations
    timeout: float
    history_namespaces: frozenset[str] = field(default_factory=frozenset)

    async def confirmed(self, subject: str, since: float, what: str) -> None:
        """Return once NATS has what was published to `subject`; PermissionDenied if it refused it."""
        try:
            await asyncio.wait_for(self.nc.flush(), self.timeout)
        except NATS_FAILURES as exc:
            raise Unavailable(f"{what}: NATS did not answer within {self.timeout:g} s") from exc
        self.violations.check("publish", subject, since=since, what=what)

    def failed(self, exc: BaseException, subject: str, since: float, what: str) -> Exception:
        """What a failed request on `subject` raises: PermissionDenied when NATS refused it."""
        if self.violations.find("publish", subject, since) is not None:
            return PermissionDenied("publish", subject, what)
        return Unavailable(f"{what}: no answer on {subject} ({type(exc).__name__})")


def _msg_id(channel: str, key: str | None) -> str | None:
    """The Nats-Msg-Id of an idempotent publish, per channel (several share a stream), as the server API's."""
    if not key:
        return None
    return hashlib.sha256(f"{channel}\n{key}".encode()).hexdigest()[:40]


async def publish(
    bus: Bus,
    channel: str,
    data: bytes,
    *,
    history: bool | None,
    idempotency_key: str | None,
    tags: dict[str, str] | None,
) -> int:
    """Publish to `channel`; its offset once stored (history), else 0 once NATS has it."""
    stored = history if history is not None else namespace_of(channel) in bus.history_namespaces
    subject = bus.subjects.input(channel) if stored else bus.subjects.live(channel)
    since = time.monotonic()
    what = f"publish to {channel!r}"
    try:
        offset = await bus_publish(
            bus.nc,
            channel,
            data,
            subjects=bus.subjects,
            tags=tags,
            history=stored,
            idempotency_key=_msg_id(channel, idempotency_key),
            ack_timeout=bus.timeout,
            deadline=bus.timeout * 3,
        )
    except NATS_FAILURES as exc:
        raise bus.failed(exc, subject, since, what) from exc
    if not stored:
        await bus.confirmed(subject, since, what)
    return offset


async def broadcast(
    bus: Bus, channels: Sequence[str], data: bytes, *, history: bool | None, tags: dict[str, str] | None
) -> list[int | Exception]:
    """`publish` to every channel at once: each one's offset, or the exception it raised."""

    async def one(channel: str) -> int | Exception:
        try:
            return await publish(bus, channel, data, history=history, idempotency_key=None, tags=tags)
        except (PermissionDenied, Unavailable) as exc:
            return exc

    return list(await asyncio.gather(*(one(c) for c in channels)))


async def control(bus: Bus, command: Control, what: str) -> None:
    """One command to every gateway; returns once NATS has it."""
    subject = bus.subjects.control
    since = time.monotonic()
    try:
        await bus.nc.publish(subject, command.SerializeToString())
    except NATS_FAILURES as exc:
        raise Unavailable(f"{what}: {type(exc).__name__}") from exc
    await bus.confirmed(subject, since, what)


def disconnect_command(user: str, client: str, code: int, reason: str, whitelist: Sequence[str]) -> Control:
    if not user:
        raise ValueError("user required")
    if code and not 3000 <= code <= 4999:
        raise ValueError("disconnect code must be within 3000-4999")
    cmd = DisconnectUser(user=user, client=client, code=code, reason=reason, whitelist=list(whitelist))
    return Control(disconnect=cmd)


def subscribe_command(user: str, channel: str, client: str, info: bytes, data: bytes, expire_at: int) -> Control:
    if not user or not channel:
        raise ValueError("user and channel required")
    cmd = SubscribeUser(user=user, channel=channel, client=client, info=info, data=data, expire_at=expire_at)
    return Control(subscribe=cmd)


def unsubscribe_command(user: str, channel: str, client: str) -> Control:
    if not user or not channel:
        raise ValueError("user and channel required")
    return Control(unsubscribe=UnsubscribeUser(user=user, channel=channel, client=client))


async def _presence_query(bus: Bus, channel: str, stats_only: bool) -> list[QueryReply]:
    """Every part of the presence service's answer; RequestFailed for its error code."""
    subject = bus.subjects.presence_query
    since = time.monotonic()
    what = f"presence of {channel!r}"
    try:
        parts = await presence_parts(bus.nc, bus.subjects, channel, stats_only=stats_only, wait=bus.timeout)
    except NATS_FAILURES as exc:
        raise bus.failed(exc, subject, since, what) from exc
    for part in parts:
        if part.HasField("error"):
            raise RequestFailed(part.error.code, part.error.message or "presence failed")
    return parts


async def presence(bus: Bus, channel: str) -> dict[str, ClientInfo]:
    """Every client in `channel` (a namespace with presence), by client id."""
    parts = await _presence_query(bus, channel, stats_only=False)
    result = client_pb2.PresenceResult()
    # proto_members: a serialized meshcast.client.v2.PresenceResult per part; together, the whole.
    result.MergeFromString(b"".join(p.proto_members for p in parts))
    return {
        client: ClientInfo(info.user, info.client, info.conn_info, info.chan_info)
        for client, info in result.presence.items()
    }


async def presence_stats(bus: Bus, channel: str) -> PresenceStats:
    [first, *_] = await _presence_query(bus, channel, stats_only=True)
    return PresenceStats(first.num_clients, first.num_users)


async def history(bus: Bus, channel: str, *, limit: int, since: tuple[int, str] | None, reverse: bool) -> HistoryPage:
    """`channel`'s publications (a namespace with history): `limit` of them (0: only the
    position, -1: all retained), after `since` ``(offset, epoch)`` when given."""
    query = HistoryRequest(channel=channel, limit=limit, reverse=reverse)
    if since is not None:
        query.has_since = True
        query.since_offset, query.since_epoch = since
    subject = bus.subjects.history_api("history")
    started = time.monotonic()
    what = f"history of {channel!r}"
    try:
        msg = await bus.nc.request(subject, query.SerializeToString(), timeout=bus.timeout)
        reply = HistoryReply.FromString(msg.data)
    except DecodeError as exc:
        raise Unavailable(f"{what}: undecodable answer") from exc
    except NATS_FAILURES as exc:
        raise bus.failed(exc, subject, started, what) from exc
    if reply.HasField("error"):
        raise RequestFailed(reply.error.code, reply.error.message or "history failed")
    publications = []
    for stored in reply.publications:
        pub = stored.publication
        info = None
        if pub.HasField("info"):
            info = ClientInfo(pub.info.user, pub.info.client, pub.info.conn_info, pub.info.chan_info)
        publications.append(Publication(stored.offset, pub.data, info, dict(pub.tags)))
    return HistoryPage(reply.epoch, reply.offset, tuple(publications))
