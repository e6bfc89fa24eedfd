"""What one webhook POST carries: the JSON body, its signature, its headers.

The body is the event as protobuf JSON with the schema's own field names
(``user``, ``client``, ``channel``, ``time_ms``...; 64-bit integers as
strings, bytes as base64, every field present), plus ``kind`` (the ``oneof``),
``id`` (the event's ``Nats-Msg-Id``, the same on every retry and
redelivery: dedupe by it) and ``seq`` (its stream sequence). The signature is
HMAC-SHA256 of the exact body bytes with the shared secret, hex:
``X-Meshcast-Signature: sha256=<hex>``. Pure functions; no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Final

from google.protobuf import json_format

from meshcast.proto.events_pb2 import Event

SIGNATURE_HEADER: Final = "X-Meshcast-Signature"
EVENT_ID_HEADER: Final = "X-Meshcast-Event-Id"
KIND_HEADER: Final = "X-Meshcast-Event-Kind"
ATTEMPT_HEADER: Final = "X-Meshcast-Delivery-Attempt"
SIGNATURE_SCHEME: Final = "sha256="


def event_body(event: Event, *, event_id: str, seq: int) -> bytes:
    """The JSON body of `event` (see the module docstring), compact, UTF-8."""
    fields = json_format.MessageToDict(
        event, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    kind = event.WhichOneof("kind") or ""
    document = {"kind": kind, "id": event_id, "seq": seq, **fields}
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def signature(secret: bytes, body: bytes) -> str:
    """The signature header's value for `body`: ``sha256=<hex HMAC-SHA256>``."""
    return SIGNATURE_SCHEME + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str) -> bool:
    """Whether `header` is `body`'s signature under `secret` (compared in constant time)."""
    return hmac.compare_digest(signature(secret, body).encode(), header.strip().encode())


def post_headers(secret: bytes, body: bytes, *, event_id: str, kind: str, attempt: int) -> dict[str, str]:
    """The headers of one POST of `body` (the `attempt`-th, from 1)."""
    return {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: signature(secret, body),
        EVENT_ID_HEADER: event_id,
        KIND_HEADER: kind,
        ATTEMPT_HEADER: str(attempt),
    }
