"""Every Meshcast process is one node of the server API's ``info``.

Each gateway and service answers ``<p>.node.v1.info`` (every one answers, no
queue group) with a `meshcast.node.v1.NodeInfo`: its uid, name
(``<kind> <host>``, a gateway its node name), version, uptime and process
figures; a gateway adds its client counts. Only inbox reply subjects are
answered (a reply subject is never a channel or a service's subject).
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable
from typing import Final

import structlog
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from meshcast.bus import Subjects
from meshcast.bus.requests import is_inbox
from meshcast.proto.node_pb2 import NodeInfo

from .process import ProcessStats

log = structlog.get_logger(__name__)

VERSION: Final = "meshcast 0.1.0"


def node_name(kind: str, configured: str = "") -> str:
    """`configured` when set, else ``<kind> <host name>``."""
    return configured or f"{kind} {socket.gethostname()}"


class NodeInfoResponder:
    def __init__(
        self,
        nc: Nats,
        subjects: Subjects,
        name: str,
        *,
        uid: str = "",
        extend: Callable[[NodeInfo], None] | None = None,
    ) -> None:
        self._nc = nc
        self._subject = subjects.node_api("info")
        self.uid = uid or str(uuid.uuid4())
        self.name = name
        self._extend = extend
        self._stats = ProcessStats()
        self._sub: Subscription | None = None

    def info(self) -> NodeInfo:
        cpu, rss = self._stats.sample()
        node = NodeInfo(uid=self.uid, name=self.name, version=VERSION, uptime=self._stats.uptime(), cpu=cpu, rss=rss)
        if self._extend is not None:
            self._extend(node)
        return node

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._subject, cb=self._on_info)

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except NatsError as exc:
                log.debug("node info unsubscribe failed", error=type(exc).__name__)

    async def _on_info(self, msg: Msg) -> None:
        if not is_inbox(msg.reply):
            log.warning("node request with a non-inbox reply subject refused")
            return
        try:
            await self._nc.publish(msg.reply, self.info().SerializeToString())
        except NatsError as exc:
            log.warning("info reply failed", error=type(exc).__name__)
