"""Frame codecs of the client protocol v2: JSON and protobuf.

A WebSocket message carries one or more commands (client to server) or
replies (server to client):

- JSON: one JSON object a line, lines joined by ``\\n``. Every ``bytes``
  field of the schema (``data``, ``conn_info``, ``chan_info``) travels as raw
  embedded JSON, not base64.
- protobuf (subprotocol ``centrifuge-protobuf``): each message prefixed with
  its length as a varint.

Decoding never raises: bad input comes back as a `DecodeFailure` with the
reason, and the session turns it into a ``bad request`` disconnect.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, Protocol

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from meshcast.proto.client_pb2 import Command, Reply


class Format(Enum):
    JSON = "json"
    PROTOBUF = "protobuf"

    @property
    def binary(self) -> bool:
        return self is Format.PROTOBUF


PROTOBUF_SUBPROTOCOL: Final = "centrifuge-protobuf"


@dataclass(frozen=True, slots=True)
class DecodeFailure:
    """A frame that is not a valid batch of commands."""

    reason: str


class Codec(Protocol):
    @property
    def format(self) -> Format: ...

    def decode_commands(self, data: bytes | str, limit: int) -> list[Command] | DecodeFailure: ...

    def encode_reply(self, reply: Reply) -> bytes: ...

    def join(self, encoded: list[bytes]) -> bytes: ...


# Fields of commands that carry raw JSON in the JSON format, by the path of
# the request message they sit in.
_RAW_COMMAND_FIELDS: Final = {
    "connect": ("data",),
    "subscribe": ("data",),
    "publish": ("data",),
    "rpc": ("data",),
    "send": ("data",),
}


class JsonCodec:
    @property
    def format(self) -> Format:
        return Format.JSON

    def decode_commands(self, data: bytes | str, limit: int) -> list[Command] | DecodeFailure:
        if isinstance(data, bytes):
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError:
                return DecodeFailure("frame is not UTF-8")
        commands: list[Command] = []
        for line in data.split("\n"):
            if not line.strip():
                continue
            if len(commands) >= limit:
                return DecodeFailure("too many commands in one frame")
            command = _parse_json_command(line)
            if isinstance(command, DecodeFailure):
                return command
            commands.append(command)
        return commands

    def encode_reply(self, reply: Reply) -> bytes:
        return message_to_json(reply).encode()

    def join(self, encoded: list[bytes]) -> bytes:
        return b"\n".join(encoded)


def _parse_json_command(line: str) -> Command | DecodeFailure:
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        return DecodeFailure(f"invalid JSON: {exc.__class__.__name__}")
    if not isinstance(obj, dict):
        return DecodeFailure("command is not a JSON object")
    try:
        for method, fields in _RAW_COMMAND_FIELDS.items():
            request = obj.get(method)
            if isinstance(request, dict):
                for name in fields:
                    if name in request:
                        request[name] = _raw_to_b64(request[name])
        subs = obj.get("connect", {}).get("subs") if isinstance(obj.get("connect"), dict) else None
        if isinstance(subs, dict):
            for sub in subs.values():
                if isinstance(sub, dict) and "data" in sub:
                    sub["data"] = _raw_to_b64(sub["data"])
        return json_format.ParseDict(obj, Command(), ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        return DecodeFailure(f"invalid command: {exc.__class__.__name__}")


def _raw_to_b64(value: Any) -> str:
    raw = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return base64.b64encode(raw.encode()).decode()


class ProtobufCodec:
    @property
    def format(self) -> Format:
        return Format.PROTOBUF

    def decode_commands(self, data: bytes | str, limit: int) -> list[Command] | DecodeFailure:
        if isinstance(data, str):
            return DecodeFailure("text frame on a protobuf connection")
        commands: list[Command] = []
        pos, end = 0, len(data)
        while pos < end:
            if len(commands) >= limit:
                return DecodeFailure("too many commands in one frame")
            size, pos = read_varint(data, pos)
            if size < 0 or pos + size > end:
                return DecodeFailure("truncated length-delimited command")
            command = Command()
            try:
                command.ParseFromString(data[pos : pos + size])
            except DecodeError:
                return DecodeFailure("invalid protobuf command")
            pos += size
            commands.append(command)
        return commands

    def encode_reply(self, reply: Reply) -> bytes:
        body = reply.SerializeToString()
        return encode_varint(len(body)) + body

    def join(self, encoded: list[bytes]) -> bytes:
        return b"".join(encoded)


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at `pos` and the position after it; (-1, pos) when invalid."""
    result = shift = 0
    for i in range(pos, min(pos + 10, len(data))):
        byte = data[i]
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, i + 1
        shift += 7
    return -1, pos


def codec_for(fmt: Format) -> Codec:
    return _CODECS[fmt]


_CODECS: Final[dict[Format, Codec]] = {Format.JSON: JsonCodec(), Format.PROTOBUF: ProtobufCodec()}


def raw_json(value: bytes) -> str:
    """`value` as embeddable JSON text: itself when it is JSON, else a JSON string.

    Protobuf clients may publish bytes that are not JSON; a JSON subscriber
    then receives them as a string instead of a frame it cannot parse.
    """
    if not value:
        return "null"
    try:
        text = value.decode("utf-8")
        json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return json.dumps(value.decode("utf-8", "replace"))
    return text


# Fields Centrifugo's JSON writes even when empty or zero, so that an SDK reading
# `result.publications.length` or `num_clients` finds them: (message, field) names.
_ALWAYS_WRITTEN: Final = {
    "HistoryResult": ("publications",),
    "PresenceResult": ("presence",),
    "PresenceStatsResult": ("num_clients", "num_users"),
}


def message_to_json(message: Message) -> str:
    """The protocol's JSON form of a reply message (bytes fields as raw JSON)."""
    fields: list[tuple[Any, Any]] = list(message.ListFields())
    always = _ALWAYS_WRITTEN.get(message.DESCRIPTOR.name)
    if always:
        present = {field.name for field, _ in fields}
        by_name = message.DESCRIPTOR.fields_by_name
        fields += [(by_name[name], getattr(message, name)) for name in always if name not in present]
    parts = [f'"{field.name}":{_field_to_json(field, value)}' for field, value in fields]
    return "{" + ",".join(parts) + "}"


def _field_to_json(field: FieldDescriptor, value: Any) -> str:
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        value_field = entry.fields_by_name["value"]
        items = (f"{json.dumps(str(k))}:{_scalar_to_json(value_field, v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if field.is_repeated:
        return "[" + ",".join(_scalar_to_json(field, v) for v in value) + "]"
    return _scalar_to_json(field, value)


def _scalar_to_json(field: FieldDescriptor, value: Any) -> str:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_to_json(value)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return raw_json(value)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return "true" if value else "false"
    return json.dumps(value)
