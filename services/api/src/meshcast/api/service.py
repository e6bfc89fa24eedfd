"""The server API's logic: each method a translation to documented bus subjects.

- publish/broadcast: the channel's live subject (core NATS), or its input
  subject in a namespace with history, acknowledged once JetStream stored it
  (riding through a stream election, stored once per idempotency key);
- subscribe/unsubscribe/disconnect/refresh: one ``meshcast.bus.v1.Control``
  on ``<p>.control``, which every gateway applies to the connections it holds;
- presence/presence_stats: the presence service's query;
- history/history_remove: the history service's requests;
- channels/info: a scatter-gather every gateway answers.

Methods take and return the messages of ``centrifugo_api.proto`` (the HTTP
shell decodes JSON into them) and raise `ApiError`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import re
import time
from dataclasses import dataclass

import structlog
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError

from meshcast.bus import SKIP_HISTORY_HEADER, encode_publication, namespace_of, store, trace_headers
from meshcast.bus.glob import PatternError, compile_pattern
from meshcast.bus.subjects import fits_token
from meshcast.common.namespaces import ChannelOptions, ChannelsConfig
from meshcast.proto import centrifugo_api_pb2 as api
from meshcast.proto.bus_pb2 import Control, DisconnectUser, RefreshUser, SubscribeUser, UnsubscribeUser
from meshcast.proto.history_pb2 import (
    HistoryReply,
    HistoryRequest,
    PositionReply,
    PositionRequest,
    RemoveReply,
    RemoveRequest,
)
from meshcast.proto.node_pb2 import NodeInfo
from meshcast.protocol import ErrorCode

from .bus import NATS_FAILURES, Bus
from .coalesce import Coalescer
from .errors import ApiError, bad_request, internal

log = structlog.get_logger(__name__)

# `info`: a gateway's `NodeResult.metrics` items, cumulative since it started.
PUBLICATIONS_ITEM = "meshcast.node.num_publications"
DELIVERIES_ITEM = "meshcast.node.num_deliveries"

# How far below the highest offset seen an ack may come back before the stream counts as new.
_REORDER_SLACK = 10_000
# Channels whose options and live subject are remembered (all forgotten when more).
KNOWN_CHANNELS = 10_000
_CONTROL = re.compile("[\x00-\x1f\x7f]")


@dataclass(slots=True)
class _Epoch:
    epoch: str
    seq: int
    at: float


def _decoded(b64: str, raw: bytes, what: str) -> bytes:
    """`raw`, or `b64` decoded when given (107 when it is not base64)."""
    if not b64:
        return raw
    try:
        return base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_request(f"{what} is not base64") from exc


def _msg_id(channel: str, key: str) -> str | None:
    """The Nats-Msg-Id of an idempotent publish: per channel (several share a stream)."""
    if not key:
        return None
    return hashlib.sha256(f"{channel}\n{key}".encode()).hexdigest()[:40]


class ApiService:
    def __init__(
        self,
        bus: Bus,
        channels: ChannelsConfig,
        *,
        publish_deadline: float,
        epoch_ttl: float,
        publish_linger: float = 0.0,
    ) -> None:
        self._bus = bus
        self._live = Coalescer(bus.nc, publish_linger)
        self._channels = channels
        self._publish_deadline = publish_deadline
        self._epoch_ttl = epoch_ttl
        self._epochs: dict[str, _Epoch] = {}
        self._known: dict[str, ChannelOptions] = {}
        self._live_subjects: dict[str, str] = {}
        self._js = bus.nc.jetstream(timeout=bus.timeout)

    # -- channels ---------------------------------------------------------------

    def _options(self, channel: str) -> ChannelOptions:
        """A well-formed channel of a known namespace: its options, else 107 or 102.

        A channel found good is remembered (the namespaces do not change while
        the process runs): publishers use the same channels again and again."""
        known = self._known.get(channel)
        if known is not None:
            return known
        options = self._check(channel)
        if len(self._known) >= KNOWN_CHANNELS:
            self._known.clear()
        self._known[channel] = options
        return options

    def _check(self, channel: str) -> ChannelOptions:
        if not channel:
            raise bad_request("channel required")
        if len(channel) > self._channels.max_channel_length or not fits_token(channel):
            raise bad_request("channel name too long")
        if _CONTROL.search(channel):
            raise bad_request("control character in channel name")
        options = self._channels.options_for(channel)
        if options is None or not options.name_allowed(self._channels.name_of(channel)):
            raise ApiError.of(ErrorCode.UNKNOWN_CHANNEL)
        return options

    def _history_options(self, channel: str) -> ChannelOptions:
        options = self._options(channel)
        if not options.history_size:
            raise ApiError.of(ErrorCode.NOT_AVAILABLE)
        return options

    async def close(self) -> None:
        """Hand NATS the live publishes still lingering (at stop, before NATS closes)."""
        await self._live.drain()

    # -- publish ----------------------------------------------------------------

    async def publish(self, request: api.PublishRequest) -> api.PublishResult:
        data = _decoded(request.b64data, request.data, "b64data")
        return await self._publish(request.channel, data, request)

    async def _publish_live(self, channel: str, body: bytes, headers: dict[str, str]) -> None:
        try:
            await self._live.publish(self._live_subject(channel), body, headers or None)
        except NATS_FAILURES as exc:
            log.warning("publish failed", channel=channel, error=type(exc).__name__)
            raise internal() from exc

    def _live_subject(self, channel: str) -> str:
        subject = self._live_subjects.get(channel)
        if subject is None:
            if len(self._live_subjects) >= KNOWN_CHANNELS:
                self._live_subjects.clear()
            subject = self._live_subjects[channel] = self._bus.subjects.live(channel)
        return subject

    async def _publish(
        self, channel: str, data: bytes, request: api.PublishRequest | api.BroadcastRequest
    ) -> api.PublishResult:
        options = self._options(channel)
        if not data:
            raise bad_request("data required")
        body = encode_publication(channel, data, tags=dict(request.tags) if request.tags else None)
        headers = trace_headers()
        bus = self._bus
        if not options.history_size:
            await self._publish_live(channel, body, headers)
            return api.PublishResult()
        if request.skip_history:
            # Not stored: straight to the live subject, without an offset (gateways
            # deliver it as it comes; a recovery never returns it).
            await self._publish_live(channel, body, {**headers, SKIP_HISTORY_HEADER: "1"})
            return api.PublishResult()
        try:
            ack = await store(
                self._js,
                bus.subjects.input(channel),
                body,
                headers=headers,
                msg_id=_msg_id(channel, request.idempotency_key),
                deadline=self._publish_deadline,
                ack_timeout=bus.timeout,
            )
        except (NatsError, JetStreamError, TimeoutError, ConnectionError) as exc:
            log.warning("history publish failed", channel=channel, error=type(exc).__name__)
            raise internal() from exc
        seq: int = ack.seq
        return api.PublishResult(offset=seq, epoch=await self._epoch(channel, seq))

    async def _epoch(self, channel: str, seq: int) -> str:
        """The epoch of `channel`'s stream, from the history service, cached per namespace.

        Read again when older than `epoch_ttl`, or when an offset is far below
        the highest seen (the stream was made anew; acks of concurrent publishes
        come back slightly out of order, which is no reason to ask). The
        publication is stored either way: when the history service is away the
        answer carries the last known epoch."""
        ns = namespace_of(channel, self._channels.namespace_separator)
        now = time.monotonic()
        known = self._epochs.get(ns)
        if known is not None and seq + _REORDER_SLACK >= known.seq and now - known.at < self._epoch_ttl:
            known.seq = max(known.seq, seq)
            return known.epoch
        try:
            pos = await self._bus.history("position", PositionRequest(channel=channel), PositionReply())
        except ApiError as err:
            log.warning("epoch unknown", channel=channel, code=err.code)
            return known.epoch if known is not None else ""
        self._epochs[ns] = _Epoch(pos.epoch, seq, now)
        return pos.epoch

    async def broadcast(self, request: api.BroadcastRequest) -> api.BroadcastResult:
        if not request.channels:
            raise bad_request("channels required")
        data = _decoded(request.b64data, request.data, "b64data")

        async def one(channel: str) -> api.PublishResponse:
            try:
                return api.PublishResponse(result=await self._publish(channel, data, request))
            except ApiError as err:
                return api.PublishResponse(error=api.Error(code=err.code, message=err.message))

        responses = await asyncio.gather(*(one(c) for c in request.channels))
        return api.BroadcastResult(responses=responses)

    # -- control ----------------------------------------------------------------

    async def _control(self, control: Control) -> None:
        """One command to every gateway; returns once NATS has it."""
        bus = self._bus
        await self._live.drain()  # after the publishes answered before it
        try:
            await bus.nc.publish(bus.subjects.control, control.SerializeToString())
            await asyncio.wait_for(bus.nc.flush(), bus.timeout)
        except NATS_FAILURES as exc:
            log.warning("control failed", command=control.WhichOneof("command"), error=type(exc).__name__)
            raise internal() from exc

    async def subscribe(self, request: api.SubscribeRequest) -> api.SubscribeResult:
        if not request.user:
            raise bad_request("user required")
        options = self._options(request.channel)
        cmd = SubscribeUser(
            user=request.user,
            channel=request.channel,
            client=request.client,
            info=_decoded(request.b64info, request.info, "b64info"),
            data=_decoded(request.b64data, request.data, "b64data"),
            expire_at=request.expire_at,
        )
        if request.HasField("recover_since"):
            if not options.history_size:
                raise ApiError.of(ErrorCode.NOT_AVAILABLE)
            cmd.has_recover_since = True
            cmd.recover_offset, cmd.recover_epoch = request.recover_since.offset, request.recover_since.epoch
        await self._control(Control(subscribe=cmd))
        return api.SubscribeResult()

    async def unsubscribe(self, request: api.UnsubscribeRequest) -> api.UnsubscribeResult:
        if not request.user:
            raise bad_request("user required")
        self._options(request.channel)
        cmd = UnsubscribeUser(user=request.user, channel=request.channel, client=request.client)
        await self._control(Control(unsubscribe=cmd))
        return api.UnsubscribeResult()

    async def disconnect(self, request: api.DisconnectRequest) -> api.DisconnectResult:
        if not request.user:
            raise bad_request("user required")
        cmd = DisconnectUser(user=request.user, client=request.client, whitelist=request.whitelist)
        if request.HasField("disconnect"):
            code = request.disconnect.code
            if code and not 3000 <= code <= 4999:
                raise bad_request("disconnect code must be within 3000-4999")
            cmd.code, cmd.reason = code, request.disconnect.reason
        await self._control(Control(disconnect=cmd))
        return api.DisconnectResult()

    async def refresh(self, request: api.RefreshRequest) -> api.RefreshResult:
        if not request.user:
            raise bad_request("user required")
        cmd = RefreshUser(
            user=request.user,
            client=request.client,
            expired=request.expired,
            expire_at=request.expire_at,
            info=request.info,
            has_info=bool(request.info),
        )
        await self._control(Control(refresh=cmd))
        return api.RefreshResult()

    # -- presence and history ---------------------------------------------------

    def _presence_options(self, channel: str) -> None:
        if not self._options(channel).presence:
            raise ApiError.of(ErrorCode.NOT_AVAILABLE)

    async def presence(self, request: api.PresenceRequest) -> api.PresenceResult:
        self._presence_options(request.channel)
        parts = await self._bus.presence(request.channel, stats_only=False)
        result = api.PresenceResult()
        # The presence service encodes meshcast.client.v2.PresenceResult: the same
        # field numbers as Centrifugo's (presence = 1; user, client, conn_info, chan_info).
        result.MergeFromString(b"".join(p.proto_members for p in parts))
        return result

    async def presence_stats(self, request: api.PresenceStatsRequest) -> api.PresenceStatsResult:
        self._presence_options(request.channel)
        [reply, *_] = await self._bus.presence(request.channel, stats_only=True)
        return api.PresenceStatsResult(num_clients=reply.num_clients, num_users=reply.num_users)

    async def history(self, request: api.HistoryRequest) -> api.HistoryResult:
        self._history_options(request.channel)
        query = HistoryRequest(channel=request.channel, limit=request.limit, reverse=request.reverse)
        if request.HasField("since"):
            query.has_since = True
            query.since_offset, query.since_epoch = request.since.offset, request.since.epoch
        reply = await self._bus.history("history", query, HistoryReply())
        result = api.HistoryResult(epoch=reply.epoch, offset=reply.offset)
        for stored in reply.publications:
            pub = stored.publication
            out = result.publications.add(data=pub.data, offset=stored.offset, tags=dict(pub.tags))
            if pub.HasField("info"):
                info = pub.info
                out.info.CopyFrom(
                    api.ClientInfo(
                        user=info.user, client=info.client, conn_info=info.conn_info, chan_info=info.chan_info
                    )
                )
        return result

    async def history_remove(self, request: api.HistoryRemoveRequest) -> api.HistoryRemoveResult:
        self._history_options(request.channel)
        await self._bus.history("remove", RemoveRequest(channel=request.channel), RemoveReply())
        self._epochs.pop(namespace_of(request.channel, self._channels.namespace_separator), None)
        return api.HistoryRemoveResult()

    # -- cluster ----------------------------------------------------------------

    async def channels(self, request: api.ChannelsRequest) -> api.ChannelsResult:
        try:
            compile_pattern(request.pattern)  # the gateways read it the same way
        except PatternError as exc:
            raise bad_request(str(exc)) from exc
        counts = await self._bus.channels(request.pattern)
        result = api.ChannelsResult()
        for name, n in counts.items():
            result.channels[name].num_clients = n
        return result

    async def info(self, request: api.InfoRequest) -> api.InfoResult:
        """Every gateway and service that answered, this API replica included."""
        nodes = []
        for node in await self._bus.nodes():
            nodes.append(
                api.NodeResult(
                    uid=node.uid,
                    name=node.name,
                    version=node.version,
                    num_clients=node.num_clients,
                    num_users=node.num_users,
                    num_channels=node.num_channels,
                    num_subs=node.num_subs,
                    uptime=node.uptime,
                    process=api.Process(cpu=node.cpu, rss=node.rss),
                    metrics=_node_metrics(node),
                )
            )
        return api.InfoResult(nodes=nodes)


def _node_metrics(node: NodeInfo) -> api.Metrics | None:
    """A gateway's cumulative counts as Centrifugo's `Metrics` items (the admin UI's chart)."""
    if not (node.num_publications or node.num_deliveries):
        return None
    items = {PUBLICATIONS_ITEM: float(node.num_publications), DELIVERIES_ITEM: float(node.num_deliveries)}
    return api.Metrics(items=items)
