"""What a backend raises, and what the SDK raises at it: one root, `BackendError`.

Handlers raise `Reject` (the client gets a protocol error, its connection
stays) or `Disconnect` (its connection closes): the two code families of the
client protocol, reply errors (100-1999) and disconnects (3000-4999), kept
apart as ``meshcast.protocol`` keeps them. Any other exception from a handler
becomes a temporary internal error (100) for the client and a log line with
the traceback for the backend: never a crash, never a stack trace sent out.

The SDK's own calls raise `PermissionDenied` (NATS refused a subject: the
message names it), `Unavailable` (NATS or the service asked did not answer in
time) and `RequestFailed` (the service answered with an error code).
"""

from __future__ import annotations

from meshcast.protocol import ErrorCode

# Close codes a backend may send (3000-3499 the SDK reconnects, 3500-3999 it does
# not, 4000-4999 for applications); see meshcast.protocol.DisconnectCode.
_DISCONNECT_RANGE = range(3000, 5000)
# Reply error codes: the protocol's (100-112) and applications' own (up to 1999).
_ERROR_RANGE = range(100, 2000)


class BackendError(Exception):
    """Root of everything meshcast.backend raises."""


class Reject(BackendError):
    """Refuse the request with a client protocol error; the connection stays.

    ``raise Reject(ErrorCode.PERMISSION_DENIED)`` or ``Reject(4001, "muted")``;
    `temporary` tells the client SDK it may retry as it is."""

    def __init__(self, code: int = ErrorCode.PERMISSION_DENIED, reason: str = "", *, temporary: bool = False) -> None:
        if code not in _ERROR_RANGE:
            raise ValueError(f"reply error code must be within 100-1999, not {code}")
        self.code = int(code)
        self.reason = reason or _message(code)
        self.temporary = temporary
        super().__init__(self.code, self.reason)

    def __str__(self) -> str:
        return f"{self.code} {self.reason}"


def _message(code: int) -> str:
    """The protocol's message for `code`, or a plain one for an application's own code."""
    try:
        return ErrorCode(code).message
    except ValueError:
        return "refused"


class Disconnect(BackendError):
    """Close the client's connection with `code` (3000-4999) and `reason`."""

    def __init__(self, code: int, reason: str = "") -> None:
        if code not in _DISCONNECT_RANGE:
            raise ValueError(f"disconnect code must be within 3000-4999, not {code}")
        self.code = int(code)
        self.reason = reason or "backend disconnect"
        super().__init__(self.code, self.reason)

    def __str__(self) -> str:
        return f"{self.code} {self.reason}"


class PermissionDenied(BackendError, PermissionError):
    """NATS refused to let this backend publish or subscribe to `subject`.

    The NATS user the backend connects as lacks the permission: give it the
    ``backend`` user's (``meshcast.common.natsauth``), or grant the subject."""

    def __init__(self, operation: str, subject: str, what: str = "") -> None:
        self.operation = operation
        self.subject = subject
        self.what = what
        super().__init__(operation, subject)

    def __str__(self) -> str:
        doing = f" ({self.what})" if self.what else ""
        return f"NATS permissions refuse {self.operation} to {self.subject!r}{doing}: check the NATS user's permissions"


class Unavailable(BackendError, TimeoutError):
    """NATS, or the Meshcast service asked over it, did not answer in time."""


class RequestFailed(BackendError):
    """A Meshcast service answered a request with a client protocol error code."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(code, message)

    def __str__(self) -> str:
        return f"{self.code} {self.message}"
