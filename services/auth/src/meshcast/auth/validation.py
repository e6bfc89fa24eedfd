"""Checking request arguments: each function returns the clean value or raises `InvalidArgument`.

Pure (no I/O, no clock: `now` is passed in) so every rule has a synchronous test.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from .errors import InvalidArgument

MAX_NAME = 1024  # user ids, channels, token ids
# Disconnect codes a gateway sends (client protocol v2): 3000-3499 reconnect,
# 3500-3999 terminal, 4000-4999 application-defined.
DISCONNECT_CODES = range(3000, 5000)
# A WebSocket close frame's reason holds at most 123 bytes (RFC 6455 5.5).
MAX_REASON_BYTES = 123
# An `issued_before` this far in the future is a unit mistake (milliseconds), not a plan.
MAX_CLOCK_AHEAD = 300


def name(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument(f"{field} is required")
    if len(value) > MAX_NAME:
        raise InvalidArgument(f"{field} is longer than {MAX_NAME} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InvalidArgument(f"{field} contains control characters")
    return value


def ttl(value: int, default: int, maximum: int) -> int:
    """The lifetime to issue with: `default` for 0, refused when negative or above `maximum`."""
    if value < 0:
        raise InvalidArgument("ttl_seconds must not be negative")
    if value > maximum:
        raise InvalidArgument(f"ttl_seconds exceeds the maximum of {maximum}")
    return value or default


def info(data: bytes, max_bytes: int, field: str = "info_json") -> Any:
    """The parsed JSON value of `data`; None when empty."""
    if not data:
        return None
    if len(data) > max_bytes:
        raise InvalidArgument(f"{field} is larger than {max_bytes} bytes")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        # ValueError covers JSONDecodeError; its position helps, the payload is not echoed.
        raise InvalidArgument(f"{field} is not valid JSON: {exc}") from None


def channels(values: Iterable[str], maximum: int) -> list[str]:
    """The channels once each, in order."""
    listed = list(dict.fromkeys(name(c, "channels[]") for c in values))
    if len(listed) > maximum:
        raise InvalidArgument(f"more than {maximum} channels")
    return listed


def timestamp(value: int, field: str) -> int:
    if value < 0:
        raise InvalidArgument(f"{field} must be unix seconds, not negative")
    return value


def issued_before(value: int | None, now: float) -> int:
    """The revocation time of a user's tokens: the given time, or the next whole second.

    ``iat`` has whole seconds, so a token issued earlier in the current second
    has the same ``iat`` as one issued later in it: both are revoked, never
    neither (a token issued in the rest of this second is refused too).
    """
    if value is None:
        return math.floor(now) + 1
    timestamp(value, "issued_before")
    if value > now + MAX_CLOCK_AHEAD:
        raise InvalidArgument("issued_before is in the future (unix seconds expected)")
    return value


def disconnect_code(value: int | None, default: int) -> int:
    if value is None:
        return default
    if value not in DISCONNECT_CODES:
        raise InvalidArgument(f"code must be a disconnect code {DISCONNECT_CODES.start}-{DISCONNECT_CODES.stop - 1}")
    return value


def reason(value: str | None, default: str) -> str:
    if value is None or value == "":
        return default
    if len(value.encode()) > MAX_REASON_BYTES:
        raise InvalidArgument(f"reason is longer than {MAX_REASON_BYTES} bytes")
    return value
