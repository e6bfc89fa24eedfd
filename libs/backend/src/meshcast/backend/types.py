"""What handlers receive and return: typed views of ``meshcast.proxy.v1`` and
``meshcast.events.v1``, and the answers of presence and history.

Data and info are bytes as the client sent them: JSON text for JSON clients,
whatever the application encodes for protobuf clients; `json()` decodes the
former.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshcast.proto.events_pb2 import Event


def _json(data: bytes) -> Any:
    """`data` decoded as JSON (None when empty); ValueError when it is not JSON."""
    return json.loads(data) if data else None


# -- delegated decisions (meshcast.proxy.v1) ------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """A connect without a token (``MESHCAST_PROXY_CONNECT=true``): who is this?"""

    client: str
    protocol: str
    name: str
    version: str
    data: bytes
    # The handshake headers the gateway passes on (``MESHCAST_PROXY_HEADERS``).
    headers: Mapping[str, str]
    remote_addr: str

    def json(self) -> Any:
        return _json(self.data)


@dataclass(frozen=True, slots=True)
class Connect:
    """Admit the connection as `user`; `expire_at` (Unix seconds) asks for refreshes."""

    user: str
    expire_at: int = 0
    info: bytes = b""
    channels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RefreshRequest:
    """A proxied connection nears its `expire_at` (``MESHCAST_PROXY_REFRESH=true``)."""

    client: str
    user: str
    info: bytes


@dataclass(frozen=True, slots=True)
class Refresh:
    """Extend the connection to `expire_at`, or end it (`expired`, closed with 3005)."""

    expire_at: int = 0
    info: bytes = b""
    expired: bool = False


@dataclass(frozen=True, slots=True)
class SubscribeRequest:
    """A subscribe to a channel of a namespace with ``proxy_subscribe``."""

    client: str
    user: str
    channel: str
    data: bytes
    info: bytes

    def json(self) -> Any:
        return _json(self.data)


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Admit the subscription; `info` becomes the subscriber's channel info."""

    info: bytes = b""
    expire_at: int = 0


@dataclass(frozen=True, slots=True)
class PublishRequest:
    """A client's publication into a namespace with ``proxy_publish``."""

    client: str
    user: str
    channel: str
    data: bytes
    info: bytes

    def json(self) -> Any:
        return _json(self.data)


@dataclass(frozen=True, slots=True)
class Publish:
    """Admit the publication, with `data` in place of the client's (None: as sent)."""

    data: bytes | None = None


@dataclass(frozen=True, slots=True)
class RPCRequest:
    """A client's ``rpc`` call to `method`."""

    client: str
    user: str
    method: str
    data: bytes
    info: bytes

    def json(self) -> Any:
        return _json(self.data)


# -- lifecycle events (meshcast.events.v1, stream MESHCAST_EVENTS) ---------------


@dataclass(frozen=True, slots=True)
class LifecycleEvent:
    """One event of the stream, flattened: the fields a kind lacks are empty.

    `sequence` is its stream sequence (what a backend keeps to recognise one it
    already handled after a redelivery); `event` is the whole protobuf message."""

    kind: str
    sequence: int
    time_ms: int
    gateway: str
    user: str
    client: str
    channel: str
    # disconnect and unsubscribe: the close or unsubscribe code and reason.
    code: int
    reason: str
    # The events service announced it for a gateway that died.
    gateway_died: bool
    # publication: the data; connect: the conn_info; subscribe: the chan_info.
    data: bytes
    event: Event = field(repr=False)

    @classmethod
    def of(cls, event: Event, sequence: int) -> LifecycleEvent:
        kind = event.WhichOneof("kind") or ""
        body = getattr(event, kind) if kind else None

        def get(name: str, default: Any) -> Any:
            return getattr(body, name, default) if body is not None else default

        data = get("data", b"") or get("conn_info", b"") or get("chan_info", b"")
        return cls(
            kind=kind,
            sequence=sequence,
            time_ms=event.time_ms,
            gateway=event.gateway,
            user=get("user", ""),
            client=get("client", ""),
            channel=get("channel", ""),
            code=get("code", 0),
            reason=get("reason", ""),
            gateway_died=get("gateway_died", False),
            data=data,
            event=event,
        )


# -- presence and history ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """A client as presence and publications show it."""

    user: str
    client: str
    conn_info: bytes = b""
    chan_info: bytes = b""


@dataclass(frozen=True, slots=True)
class PresenceStats:
    num_clients: int
    num_users: int


@dataclass(frozen=True, slots=True)
class Publication:
    """A stored publication: its offset in the channel's stream, its data and publisher."""

    offset: int
    data: bytes
    info: ClientInfo | None = None
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """Publications of a channel and where its stream stands (epoch, offset)."""

    epoch: str
    offset: int
    publications: tuple[Publication, ...]
