"""One handler per command: ``(context, client, request) -> result``.

A handler returns the result message (None for commands without a reply) or
raises `ReplyError` (the reply carries an error) or `DisconnectError`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf.message import Message

from .. import metrics
from ..client import Client
from ..context import GatewayContext
from .connect import handle_connect, handle_refresh
from .history import handle_history
from .misc import handle_ping, handle_send
from .presence import handle_presence, handle_presence_stats
from .publish import handle_publish
from .result import AfterReply, EncodedResult
from .rpc import handle_rpc
from .subscribe import handle_sub_refresh, handle_subscribe, handle_unsubscribe

Handler = Callable[[GatewayContext, Client, Any], Awaitable[Message | AfterReply | EncodedResult | None]]


def _timed(method: str, handler: Handler) -> Handler:
    """`handler`, its time observed in ``meshcast_gateway_command_seconds{method}``."""
    histogram = metrics.COMMAND_SECONDS.labels(method)

    async def timed(ctx: GatewayContext, client: Client, request: Any) -> Message | AfterReply | EncodedResult | None:
        started = time.perf_counter()
        try:
            return await handler(ctx, client, request)
        finally:
            histogram.observe(time.perf_counter() - started)

    timed.__name__ = handler.__name__
    return timed


_HANDLERS: dict[str, Handler] = {
    "connect": handle_connect,
    "refresh": handle_refresh,
    "subscribe": handle_subscribe,
    "unsubscribe": handle_unsubscribe,
    "publish": handle_publish,
    "presence": handle_presence,
    "presence_stats": handle_presence_stats,
    "history": handle_history,
    "rpc": handle_rpc,
    "sub_refresh": handle_sub_refresh,
    "send": handle_send,
    "ping": handle_ping,
}
HANDLERS: dict[str, Handler] = {method: _timed(method, handler) for method, handler in _HANDLERS.items()}

__all__ = ["HANDLERS", "AfterReply", "Handler"]
