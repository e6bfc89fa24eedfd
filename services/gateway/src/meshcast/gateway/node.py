"""The gateway's answers to the scatter-gather requests of the server API.

``<p>.node.v1.channels`` (this gateway's channels matching a glob, with their
local subscriber counts) and ``<p>.node.v1.info`` (this gateway as one node,
with its client counts: `meshcast.common.node`).
Every gateway answers (no queue group); the requester sums the counts. Only
inbox reply subjects are answered, and a long channel list goes in parts
sized by bytes (`reply_limit`), `more` on all but the last.
"""

from __future__ import annotations

import socket
from collections import Counter

import structlog
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from prometheus_client import Counter as Counter_

from meshcast.bus.glob import PatternError, compile_pattern
from meshcast.bus.requests import in_parts, is_inbox, reply_limit
from meshcast.common.node import NodeInfoResponder
from meshcast.proto.node_pb2 import ChannelCount, ChannelsReply, ChannelsRequest, NodeInfo

from . import metrics
from .context import GatewayContext

log = structlog.get_logger(__name__)

# Per channel entry in a reply: the name plus the field tags and lengths.
_ENTRY_OVERHEAD = 16


def _count(counter: Counter_) -> int:
    """A counter's value since the process started, read through the public collector API."""
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                return int(sample.value)
    return 0


class NodeResponder:
    def __init__(self, ctx: GatewayContext, uid: str) -> None:
        self._ctx = ctx
        self.uid = uid
        name = ctx.settings.node_name or socket.gethostname()
        self._info = NodeInfoResponder(ctx.nc, ctx.subjects, name, uid=uid, extend=self._counts)
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._ctx.nc.subscribe(self._ctx.subjects.node_api("channels"), cb=self._on_channels)
        await self._info.start()

    async def stop(self) -> None:
        await self._info.stop()
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except NatsError as exc:
                log.debug("node unsubscribe failed", error=type(exc).__name__)

    def channel_counts(self, pattern: str) -> list[ChannelCount]:
        """This gateway's channels matching `pattern` (`meshcast.bus.glob`); none
        for a pattern that cannot be read (the API refuses those with 107)."""
        try:
            matches = compile_pattern(pattern)
        except PatternError as exc:
            log.warning("channels pattern refused", error=str(exc))
            return []
        counts: Counter[str] = Counter()
        for client in self._ctx.hub.clients.values():
            counts.update(client.channels)
        return [ChannelCount(channel=name, num_clients=n) for name, n in sorted(counts.items()) if matches(name)]

    def info(self) -> NodeInfo:
        return self._info.info()

    def _counts(self, node: NodeInfo) -> None:
        clients = list(self._ctx.hub.clients.values())
        node.num_clients = len(clients)
        node.num_users = len({c.user for c in clients})
        node.num_channels = self._ctx.hub.channel_count()
        node.num_subs = sum(len(c.channels) for c in clients)
        node.num_publications = _count(metrics.BUS_MESSAGES)
        node.num_deliveries = _count(metrics.DELIVERIES)

    async def _on_channels(self, msg: Msg) -> None:
        if not is_inbox(msg.reply):
            log.warning("node request with a non-inbox reply subject refused")
            return
        request = ChannelsRequest()
        try:
            request.ParseFromString(msg.data)
        except DecodeError:
            log.warning("bad channels request")
            return
        counts = self.channel_counts(request.pattern)
        limit = reply_limit(self._ctx.nc, self._ctx.settings.max_reply_bytes)
        parts = in_parts(counts, lambda c: len(c.channel.encode()) + _ENTRY_OVERHEAD, limit)
        try:
            for i, part in enumerate(parts):
                reply = ChannelsReply(node=self.uid, channels=part, more=i < len(parts) - 1)
                await self._ctx.nc.publish(msg.reply, reply.SerializeToString())
        except NatsError as exc:
            log.warning("channels reply failed", error=type(exc).__name__)
