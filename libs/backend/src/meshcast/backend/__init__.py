"""Write Meshcast backend services on NATS.

>>> from meshcast.backend import Backend, Publish, Reject
>>> app = Backend("nats://backend:pw@127.0.0.1:4222", name="chat-bot")
>>> @app.on_publish
... async def moderate(request: PublishRequest) -> Publish | None:
...     if b"spam" in request.data:
...         raise Reject(103, "no spam")
...     return None
>>> app.run()

Calls: `Backend.publish`, `broadcast`, `presence`, `presence_stats`, `history`,
`disconnect`, `subscribe_user`, `unsubscribe_user`. Handlers: `Backend.rpc`,
`on_connect`, `on_refresh`, `on_subscribe`, `on_publish` (the decisions
gateways delegate, ``meshcast.proxy.v1``) and `on_event` (lifecycle events
from a durable consumer on ``MESHCAST_EVENTS``).
"""

from __future__ import annotations

from meshcast.protocol import DisconnectCode, ErrorCode

from .app import Backend
from .errors import BackendError, Disconnect, PermissionDenied, Reject, RequestFailed, Unavailable
from .types import (
    ClientInfo,
    Connect,
    ConnectRequest,
    HistoryPage,
    LifecycleEvent,
    PresenceStats,
    Publication,
    Publish,
    PublishRequest,
    Refresh,
    RefreshRequest,
    RPCRequest,
    Subscribe,
    SubscribeRequest,
)

__all__ = [
    "Backend",
    "BackendError",
    "ClientInfo",
    "Connect",
    "ConnectRequest",
    "Disconnect",
    "DisconnectCode",
    "ErrorCode",
    "HistoryPage",
    "LifecycleEvent",
    "PermissionDenied",
    "PresenceStats",
    "Publication",
    "Publish",
    "PublishRequest",
    "RPCRequest",
    "Refresh",
    "RefreshRequest",
    "Reject",
    "RequestFailed",
    "Subscribe",
    "SubscribeRequest",
    "Unavailable",
]
