"""Frames to bytes and back, in both formats, written from the protocol's schema.

Commands are written as the JSON protocol spells them; for protobuf, every
``bytes`` field of the schema (``data``, ``info``...) holding a JSON value is
sent as that value's JSON text, as SDKs do. Received protobuf replies become
the same JSON-shaped dicts: a ``bytes`` field holding JSON is that JSON again,
otherwise ``{"$bytes": "<hex>"}``; fields left at their default are absent, as
in proto3 and in Centrifugo's JSON (``omitempty``). A field Meshcast's schema
does not know is kept as ``"#<field number>"``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet

from meshcast.proto.client_pb2 import Command, Reply
from meshcast.protocol import Format

JsonValue = Any


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at `pos` and the position after it; (-1, pos) when there is none."""
    result = shift = 0
    for i in range(pos, min(pos + 10, len(data))):
        result |= (data[i] & 0x7F) << shift
        if not data[i] & 0x80:
            return result, i + 1
        shift += 7
    return -1, pos


class Undecodable(ValueError):
    """A server sent bytes that are not frames of the negotiated format."""


def _to_parse_dict(value: Mapping[str, Any], descriptor: Descriptor) -> dict[str, Any]:
    """`value` with every bytes field base64-encoded, as `json_format.ParseDict` wants it."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        fd = descriptor.fields_by_name.get(key)
        if fd is None:
            out[key] = item  # ParseDict names the unknown field
        elif fd.type == FieldDescriptor.TYPE_BYTES:
            raw = item if isinstance(item, bytes) else json.dumps(item).encode()
            out[key] = base64.b64encode(raw).decode()
        elif fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            value_fd = fd.message_type.fields_by_name["value"]
            out[key] = {
                k: _to_parse_dict(v, value_fd.message_type) if value_fd.message_type else v for k, v in item.items()
            }
        elif fd.message_type is not None:
            out[key] = _to_parse_dict(item, fd.message_type)
        else:
            out[key] = item
    return out


def command_bytes(command: Mapping[str, Any]) -> bytes:
    message = json_format.ParseDict(_to_parse_dict(command, Command.DESCRIPTOR), Command())
    data = message.SerializeToString()
    return varint(len(data)) + data


def encode(fmt: Format, commands: list[Mapping[str, Any]]) -> str | bytes:
    """Several commands in one frame: JSON lines, or varint-delimited protobuf."""
    if fmt is Format.JSON:
        return "\n".join(json.dumps(c) for c in commands)
    return b"".join(command_bytes(c) for c in commands)


def _bytes_value(raw: bytes) -> JsonValue:
    try:
        return json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError):
        return {"$bytes": raw.hex()}


def _unknown(message: Message) -> dict[str, Any]:
    """Fields this schema does not have, by number: a length-delimited one as text (or hex)."""
    out: dict[str, Any] = {}
    for item in UnknownFieldSet(message):  # type: ignore[attr-defined]
        data = item.data
        if isinstance(data, bytes):
            try:
                data = data.decode()
            except UnicodeDecodeError:
                data = data.hex()
        out[f"#{item.field_number}"] = data if isinstance(data, str | int) else repr(data)
    return out


def message_dict(message: Message) -> dict[str, Any]:
    """A protobuf message as a JSON-shaped dict (see the module docstring); fields the
    schema lacks appear as ``"#<number>"``, so a field the reference sends is never dropped."""
    out: dict[str, Any] = _unknown(message)
    for fd, value in message.ListFields():
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            value_fd = fd.message_type.fields_by_name["value"]
            out[fd.name] = {k: message_dict(v) if value_fd.message_type else v for k, v in value.items()}
        elif fd.is_repeated:
            out[fd.name] = [message_dict(v) if fd.message_type else v for v in value]
        elif fd.message_type is not None:
            out[fd.name] = message_dict(value)
        elif fd.type == FieldDescriptor.TYPE_BYTES:
            out[fd.name] = _bytes_value(value)
        else:
            out[fd.name] = value
    return out


def decode(fmt: Format, raw: str | bytes) -> list[dict[str, Any]]:
    """Every reply in one received WebSocket message."""
    if fmt is Format.JSON:
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        try:
            return [json.loads(line) for line in text.split("\n") if line.strip()]
        except ValueError as exc:
            raise Undecodable(f"not JSON lines: {text[:200]!r}") from exc
    data = raw.encode() if isinstance(raw, str) else raw
    replies, pos = [], 0
    while pos < len(data):
        size, pos = read_varint(data, pos)
        if size < 0 or pos + size > len(data):
            raise Undecodable(f"not varint-delimited protobuf: {data[:64].hex()}")
        reply = Reply()
        try:
            reply.ParseFromString(data[pos : pos + size])
        except DecodeError as exc:
            raise Undecodable(f"not a Reply: {data[pos : pos + size][:64].hex()}") from exc
        pos += size
        replies.append(message_dict(reply))
    return replies
