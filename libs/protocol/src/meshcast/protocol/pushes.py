"""Pushes and WebSocket frames for the fan-out path.

A publication is encoded once per format for all its subscribers on a
gateway, and framed once: server-to-client WebSocket frames are not masked
(RFC 6455 section 5.1), so the same frame bytes go to every socket.
"""

from __future__ import annotations

import json
import struct
from typing import Final

from meshcast.proto.client_pb2 import ClientInfo, Publication, Push, Reply

from .codec import Format, encode_varint, message_to_json, raw_json

_OP_TEXT: Final = 0x81  # FIN + text
_OP_BINARY: Final = 0x82  # FIN + binary

# An empty reply is a server ping; the client answers with an empty command.
PING: Final = {Format.JSON: b"{}", Format.PROTOBUF: encode_varint(0)}


def ws_frame(payload: bytes, binary: bool) -> bytes:
    """One unmasked, unfragmented server WebSocket frame holding `payload`."""
    head = _OP_BINARY if binary else _OP_TEXT
    size = len(payload)
    if size < 126:
        return bytes((head, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", head, 126, size) + payload
    return struct.pack("!BBQ", head, 127, size) + payload


def publication_push(
    fmt: Format,
    channel: str,
    data: bytes,
    *,
    info: ClientInfo | None = None,
    offset: int = 0,
    tags: dict[str, str] | None = None,
    epoch: str = "",
) -> bytes:
    """The encoded push of one publication, for a connection of format `fmt`
    (`epoch` only with a channel's first publication of it, as Centrifugo sends it)."""
    if fmt is Format.PROTOBUF:
        pub = Publication(data=data, offset=offset, tags=tags or {}, epoch=epoch)
        if info is not None:
            pub.info.CopyFrom(info)
        body = Reply(push=Push(channel=channel, pub=pub)).SerializeToString()
        return encode_varint(len(body)) + body
    parts = ['{"push":{"channel":', json.dumps(channel), ',"pub":{"data":', raw_json(data)]
    if info is not None:
        parts += (',"info":', message_to_json(info))
    if offset:
        parts += (',"offset":', str(offset))
    if epoch:
        parts += (',"epoch":', json.dumps(epoch))
    if tags:
        parts += (',"tags":', json.dumps(tags))
    parts.append("}}}")
    return "".join(parts).encode()


def join_pushes(fmt: Format, encoded: list[bytes]) -> bytes:
    """Several encoded replies as the payload of one WebSocket message."""
    if len(encoded) == 1:
        return encoded[0]
    return (b"\n" if fmt is Format.JSON else b"").join(encoded)
