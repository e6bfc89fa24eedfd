"""The two code families of the client protocol v2, and unsubscribe codes.

- `ErrorCode`: the `error.code` of a reply to one command. The connection
  stays open. 100-199 are the protocol's own; applications use 400-1999.
- `DisconnectCode`: the WebSocket close code that ends a connection.
  3000-3499: the client reconnects; 3500-3999: terminal, it does not;
  4000-4499 (reconnect) and 4500-4999 (terminal) belong to applications.
- `UnsubscribeCode`: the code of an `unsubscribe` push. Below 2500 the
  subscription ends; 2500 and above, the SDK subscribes again.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class ErrorCode(IntEnum):
    INTERNAL = 100
    UNAUTHORIZED = 101
    UNKNOWN_CHANNEL = 102
    PERMISSION_DENIED = 103
    METHOD_NOT_FOUND = 104
    ALREADY_SUBSCRIBED = 105
    LIMIT_EXCEEDED = 106
    BAD_REQUEST = 107
    NOT_AVAILABLE = 108
    TOKEN_EXPIRED = 109
    EXPIRED = 110
    TOO_MANY_REQUESTS = 111
    UNRECOVERABLE_POSITION = 112

    @property
    def message(self) -> str:
        return _ERROR_MESSAGES[self]

    @property
    def temporary(self) -> bool:
        """Whether an SDK may retry the command as it is."""
        return self in (ErrorCode.INTERNAL, ErrorCode.TOO_MANY_REQUESTS)


_ERROR_MESSAGES = {
    ErrorCode.INTERNAL: "internal server error",
    ErrorCode.UNAUTHORIZED: "unauthorized",
    ErrorCode.UNKNOWN_CHANNEL: "unknown channel",
    ErrorCode.PERMISSION_DENIED: "permission denied",
    ErrorCode.METHOD_NOT_FOUND: "method not found",
    ErrorCode.ALREADY_SUBSCRIBED: "already subscribed",
    ErrorCode.LIMIT_EXCEEDED: "limit exceeded",
    ErrorCode.BAD_REQUEST: "bad request",
    ErrorCode.NOT_AVAILABLE: "not available",
    ErrorCode.TOKEN_EXPIRED: "token expired",
    ErrorCode.EXPIRED: "expired",
    ErrorCode.TOO_MANY_REQUESTS: "too many requests",
    ErrorCode.UNRECOVERABLE_POSITION: "unrecoverable position",
}


class DisconnectCode(IntEnum):
    CONNECTION_CLOSED = 3000
    SHUTDOWN = 3001
    SERVER_ERROR = 3004
    EXPIRED = 3005
    SUB_EXPIRED = 3006
    SLOW = 3008
    WRITE_ERROR = 3009
    INSUFFICIENT_STATE = 3010
    FORCE_RECONNECT = 3011
    NO_PONG = 3012
    TOO_MANY_REQUESTS = 3013
    INVALID_TOKEN = 3500
    BAD_REQUEST = 3501
    STALE = 3502
    FORCE_NO_RECONNECT = 3503
    CONNECTION_LIMIT = 3504
    CHANNEL_LIMIT = 3505
    INAPPROPRIATE_PROTOCOL = 3506
    PERMISSION_DENIED = 3507
    NOT_AVAILABLE = 3508
    TOO_MANY_ERRORS = 3509

    @property
    def reason(self) -> str:
        return _DISCONNECT_REASONS[self]

    @property
    def reconnect(self) -> bool:
        return is_reconnect_code(self)


def is_reconnect_code(code: int) -> bool:
    """Whether a client should reconnect after a close with `code`."""
    return not (3500 <= code < 4000 or 4500 <= code < 5000)


_DISCONNECT_REASONS = {
    DisconnectCode.CONNECTION_CLOSED: "connection closed",
    DisconnectCode.SHUTDOWN: "shutdown",
    DisconnectCode.SERVER_ERROR: "internal server error",
    DisconnectCode.EXPIRED: "connection expired",
    DisconnectCode.SUB_EXPIRED: "subscription expired",
    DisconnectCode.SLOW: "slow",
    DisconnectCode.WRITE_ERROR: "write error",
    DisconnectCode.INSUFFICIENT_STATE: "insufficient state",
    DisconnectCode.FORCE_RECONNECT: "force reconnect",
    DisconnectCode.NO_PONG: "no pong",
    DisconnectCode.TOO_MANY_REQUESTS: "too many requests",
    DisconnectCode.INVALID_TOKEN: "invalid token",
    DisconnectCode.BAD_REQUEST: "bad request",
    DisconnectCode.STALE: "stale",
    DisconnectCode.FORCE_NO_RECONNECT: "force disconnect",
    DisconnectCode.CONNECTION_LIMIT: "connection limit",
    DisconnectCode.CHANNEL_LIMIT: "channel limit",
    DisconnectCode.INAPPROPRIATE_PROTOCOL: "inappropriate protocol",
    DisconnectCode.PERMISSION_DENIED: "permission denied",
    DisconnectCode.NOT_AVAILABLE: "not available",
    DisconnectCode.TOO_MANY_ERRORS: "too many errors",
}


class UnsubscribeCode(IntEnum):
    CLIENT = 0
    DISCONNECT = 1
    SERVER = 2000
    INSUFFICIENT_STATE = 2500
    EXPIRED = 2501


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Why a connection ends: the WebSocket close code and reason."""

    code: int
    reason: str

    @classmethod
    def of(cls, code: DisconnectCode) -> Disconnect:
        return cls(int(code), code.reason)

    @property
    def reconnect(self) -> bool:
        return is_reconnect_code(self.code)


class ProtocolError(Exception):
    """Root of the errors a command handler raises to answer a client."""


class ReplyError(ProtocolError):
    """A command failed: the reply carries this error; the connection lives on."""

    def __init__(self, code: int, message: str, temporary: bool = False) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.temporary = temporary

    @classmethod
    def of(cls, code: ErrorCode, message: str | None = None) -> ReplyError:
        return cls(int(code), message or code.message, code.temporary)


class DisconnectError(ProtocolError):
    """A command handler decided the connection must end."""

    def __init__(self, disconnect: Disconnect) -> None:
        super().__init__(disconnect.code, disconnect.reason)
        self.disconnect = disconnect

    @classmethod
    def of(cls, code: DisconnectCode) -> DisconnectError:
        return cls(Disconnect.of(code))
