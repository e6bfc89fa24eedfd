"""NATS permission violations, turned from log noise into `PermissionDenied`.

nats-server answers a publish or subscribe its user may not make with
``-ERR 'Permissions Violation for Publish to "<subject>"'`` (or ``for
Subscription to``) and drops it; the connection stays up. nats-py hands that
text, lower-cased, to the error callback and nothing else: a refused publish
simply never arrives, a refused request times out. `Violations` keeps what
the server refused, so a call that failed or timed out can say why, naming
the subject. The server writes the ``-ERR`` before it answers the next
``PING``, so after a flush every refusal of what came before it is here.
"""

from __future__ import annotations

import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Final

from .errors import PermissionDenied

_VIOLATION_RE: Final = re.compile(r'permissions violation for (publish|subscription) to "([^"]+)"')
# How many refusals, and for how long, a failed call may look back on.
_KEEP: Final = 256
_KEEP_SECONDS: Final = 120.0


@dataclass(frozen=True, slots=True)
class Violation:
    operation: str  # "publish" or "subscribe"
    subject: str  # lower-cased, as nats-py passes the server's text on
    at: float


def parse(message: str) -> Violation | None:
    """The refusal in one error text of nats-py's error callback, if it is one."""
    match = _VIOLATION_RE.search(message.lower())
    if match is None:
        return None
    operation = "publish" if match.group(1) == "publish" else "subscribe"
    return Violation(operation, match.group(2), time.monotonic())


class Violations:
    """The recent refusals of one connection."""

    def __init__(self) -> None:
        self._seen: deque[Violation] = deque(maxlen=_KEEP)

    def record(self, message: str) -> Violation | None:
        violation = parse(message)
        if violation is not None:
            self._seen.append(violation)
        return violation

    def find(self, operation: str, subject: str, since: float = 0.0) -> Violation | None:
        """The newest refusal of `operation` on `subject` (exact, case-blind) since `since`."""
        horizon = max(since, time.monotonic() - _KEEP_SECONDS)
        wanted = subject.lower()
        for violation in reversed(self._seen):
            if violation.at < horizon:
                break
            if violation.operation == operation and violation.subject == wanted:
                return violation
        return None

    def check(self, operation: str, subject: str, *, since: float = 0.0, what: str = "") -> None:
        """Raise `PermissionDenied` when the server refused `operation` on `subject` since `since`."""
        if self.find(operation, subject, since) is not None:
            raise PermissionDenied(operation, subject, what)

    def check_prefix(self, operation: str, prefix: str, *, since: float = 0.0, what: str = "") -> None:
        """As `check`, for any subject under `prefix` (JetStream API calls, whose subject nats-py builds)."""
        horizon = max(since, time.monotonic() - _KEEP_SECONDS)
        wanted = prefix.lower()
        for violation in reversed(self._seen):
            if violation.at < horizon:
                break
            if violation.operation == operation and violation.subject.startswith(wanted):
                # The caller's prefix keeps its case (stream names are upper case).
                raise PermissionDenied(operation, prefix + violation.subject[len(prefix) :], what)
