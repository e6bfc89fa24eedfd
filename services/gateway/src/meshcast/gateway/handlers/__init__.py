"""One handler per command: ``(context, client, request) -> result``.

A handler returns the result message (None for commands without a reply) or
raises `ReplyError` (the reply carries an error) or `DisconnectError`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf.message import Message

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

HANDLERS: dict[str, Handler] = {
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

__all__ = ["HANDLERS", "AfterReply", "Handler"]
