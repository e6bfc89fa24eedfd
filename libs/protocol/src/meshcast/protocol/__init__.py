"""Sans-I/O core of the Centrifugo client protocol v2.

Bytes in, events out, bytes to send out: no sockets, no asyncio, no clock.
The gateway's connection module is the I/O shell around it.
"""

from __future__ import annotations

from .codec import PROTOBUF_SUBPROTOCOL, Codec, DecodeFailure, Format, codec_for
from .codes import (
    Disconnect,
    DisconnectCode,
    DisconnectError,
    ErrorCode,
    ProtocolError,
    ReplyError,
    UnsubscribeCode,
    is_reconnect_code,
)
from .pushes import PING, join_pushes, publication_push, ws_frame
from .session import CloseRequired, CommandReceived, Event, PongReceived, ServerSession, State

__all__ = [
    "PING",
    "PROTOBUF_SUBPROTOCOL",
    "CloseRequired",
    "Codec",
    "CommandReceived",
    "DecodeFailure",
    "Disconnect",
    "DisconnectCode",
    "DisconnectError",
    "ErrorCode",
    "Event",
    "Format",
    "PongReceived",
    "ProtocolError",
    "ReplyError",
    "ServerSession",
    "State",
    "UnsubscribeCode",
    "codec_for",
    "is_reconnect_code",
    "join_pushes",
    "publication_push",
    "ws_frame",
]
