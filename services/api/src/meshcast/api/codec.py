"""JSON of the HTTP API <-> the messages of ``centrifugo_api.proto``.

The HTTP API carries the gRPC messages as JSON, as Centrifugo's does: field
names as in the schema; ``data``, ``info``, ``conn_info`` and ``chan_info``
are raw JSON values (not base64: that is what ``b64data``/``b64info`` are
for). On output a field with its zero value is left out (Centrifugo's
``omitempty``), except the few its clients require present: the maps of
``presence`` and ``channels``, ``nodes``, the counts of ``presence_stats``,
``responses`` and ``replies``.

A body that is not JSON, or a field of the wrong type, is `DecodeFailed`
(HTTP 400), as Centrifugo answers a request it cannot decode.
"""

from __future__ import annotations

import base64
import json
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

M = TypeVar("M", bound=Message)

RAW_JSON_FIELDS = frozenset({"data", "info", "conn_info", "chan_info"})
# (message, field) written even when empty or zero.
_ALWAYS = frozenset(
    {
        ("PresenceResult", "presence"),
        ("ChannelsResult", "channels"),
        ("InfoResult", "nodes"),
        ("PresenceStatsResult", "num_clients"),
        ("PresenceStatsResult", "num_users"),
        ("ChannelInfo", "num_clients"),
        ("NodeResult", "uid"),
        ("NodeResult", "name"),
        ("BroadcastResult", "responses"),
        ("HistoryResult", "publications"),
    }
)


class DecodeFailed(ValueError):
    """The body is not JSON of the method's request (HTTP 400)."""


# One encoder, made once: `json.dumps` with arguments builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _raw(value: Any) -> bytes:
    return _ENCODER.encode(value).encode()


def _prepare(value: Any, descriptor: Any) -> Any:
    """`value` with the raw-JSON bytes fields of `descriptor` as base64, as ParseDict wants bytes."""
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        field = descriptor.fields_by_name.get(key)
        if field is None or item is None:
            continue  # Unknown fields are ignored, as Centrifugo does; null is absent.
        if field.type == FieldDescriptor.TYPE_BYTES and key in RAW_JSON_FIELDS:
            out[key] = base64.b64encode(_raw(item)).decode()
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
            if field.is_repeated and isinstance(item, list):
                out[key] = [_prepare(v, field.message_type) for v in item]
            else:
                out[key] = _prepare(item, field.message_type)
        else:
            out[key] = item
    return out


def parse_body(body: bytes) -> Any:
    try:
        return json.loads(body)  # an empty body is not JSON either: `{}` is the empty request
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeFailed("body is not JSON") from exc


# Publish is the hot path: its plain fields are set directly (json_format is slow).
_PUBLISH_STR = frozenset({"channel", "b64data", "idempotency_key"})


def _fast_publish(params: dict[str, Any], message: Message) -> bool:
    """Set a PublishRequest's fields from `params` when they are all plain; False to take the slow path."""
    out: Any = message
    for key, value in params.items():
        if value is None:
            continue
        if key == "data":
            out.data = _raw(value)
        elif key in _PUBLISH_STR and isinstance(value, str):
            setattr(out, key, value)
        elif key == "skip_history" and isinstance(value, bool):
            out.skip_history = value
        elif key == "tags" and isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
            out.tags.update(value)
        else:
            message.Clear()
            return False
    return True


def decode_request(params: Any, message: M) -> M:
    """Fill `message` from the JSON value `params` (an object)."""
    if not isinstance(params, dict):
        raise DecodeFailed("request must be a JSON object")
    if message.DESCRIPTOR.name == "PublishRequest" and _fast_publish(params, message):
        return message
    try:
        json_format.ParseDict(_prepare(params, message.DESCRIPTOR), message, ignore_unknown_fields=True)
    except (json_format.ParseError, TypeError, ValueError) as exc:
        raise DecodeFailed("malformed request") from exc
    return message


def _raw_value(data: bytes) -> Any:
    """Stored raw JSON as a value; binary (b64data) publications come back as a base64 string."""
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return base64.b64encode(data).decode()


def encode_message(message: Message) -> dict[str, Any]:
    """`message` as Centrifugo's JSON (see the module docstring)."""
    out: dict[str, Any] = {}
    type_name = message.DESCRIPTOR.name
    for field in message.DESCRIPTOR.fields:
        name = field.name
        value = getattr(message, name)
        always = (type_name, name) in _ALWAYS
        sub = field.message_type
        if sub is not None and sub.GetOptions().map_entry:
            if value or always:
                nested = sub.fields_by_name["value"].message_type is not None
                out[name] = {k: encode_message(v) if nested else v for k, v in value.items()}
        elif field.is_repeated:
            if value or always:
                out[name] = [encode_message(v) if sub is not None else v for v in value]
        elif sub is not None:
            if message.HasField(name):
                out[name] = encode_message(value)
        elif field.type == FieldDescriptor.TYPE_BYTES:
            if value:
                out[name] = _raw_value(value) if name in RAW_JSON_FIELDS else base64.b64encode(value).decode()
        elif value or always:
            out[name] = value
    return out


def dumps(value: Any) -> bytes:
    return _ENCODER.encode(value).encode()
