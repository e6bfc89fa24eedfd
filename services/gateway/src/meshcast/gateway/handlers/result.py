"""What a handler may return besides a plain result message."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.message import Message


@dataclass(frozen=True, slots=True)
class AfterReply:
    """A result whose `then` must run right after the reply is written
    (a history subscriber goes live only behind its subscribe reply)."""

    result: Message
    then: Callable[[], None]


@dataclass(frozen=True, slots=True)
class EncodedResult:
    """A result message encoded elsewhere (the presence service encodes members once)."""

    proto: bytes
    json: bytes
