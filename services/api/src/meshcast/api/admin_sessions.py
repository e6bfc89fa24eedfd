"""Admin logins and sessions, with time passed in (no clock, no I/O).

- A login presents the admin secret; it is compared in constant time. A right
  one opens a session: a random token (`secrets.token_urlsafe`, 256 bits) that
  expires `ttl` seconds later, whatever the browser does with its cookie.
- Failed logins are limited: after `max_failures` within `window` seconds every
  login is refused (`Verdict.LIMITED`, the right secret too) until the oldest of
  them leaves the window. The limit is one for the replica, not per address: a
  guesser cannot spread its tries, and the price, someone locking the admin out,
  lasts one window at most.
- At most `max_sessions` live at once; a new one beyond that ends the oldest.
- Tokens are kept as their SHA-256, so a memory dump shows no usable token;
  a lookup is a dict access by that digest.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass


class Verdict(enum.Enum):
    ADMITTED = "admitted"
    REFUSED = "refused"
    LIMITED = "limited"


@dataclass(frozen=True, slots=True)
class Login:
    verdict: Verdict
    # The session token when admitted, else ''.
    token: str = ""
    # LIMITED: seconds until a login may be tried again.
    retry_after: float = 0.0


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class LoginLimiter:
    """At most `max_failures` failed logins within any `window` seconds."""

    def __init__(self, max_failures: int, window: float) -> None:
        self._max = max_failures
        self._window = window
        self._failures: deque[float] = deque()

    def _forget(self, now: float) -> None:
        while self._failures and self._failures[0] <= now - self._window:
            self._failures.popleft()

    def retry_after(self, now: float) -> float:
        """0 when a login may be tried now, else the seconds to wait."""
        self._forget(now)
        if len(self._failures) < self._max:
            return 0.0
        return self._failures[0] + self._window - now

    def failed(self, now: float) -> None:
        self._failures.append(now)


class AdminSessions:
    def __init__(self, secret: str, *, ttl: float, max_sessions: int, limiter: LoginLimiter) -> None:
        if not secret:
            raise ValueError("an admin secret is required")
        self._secret = secret.encode()
        self.ttl = ttl
        self._max = max_sessions
        self._limiter = limiter
        # Token digest -> expiry, oldest first.
        self._sessions: OrderedDict[bytes, float] = OrderedDict()

    def login(self, presented: str, now: float) -> Login:
        wait = self._limiter.retry_after(now)
        if wait > 0:
            return Login(Verdict.LIMITED, retry_after=wait)
        if not hmac.compare_digest(presented.encode(), self._secret):
            self._limiter.failed(now)
            return Login(Verdict.REFUSED)
        self._expire(now)
        while len(self._sessions) >= self._max:
            self._sessions.popitem(last=False)
        token = secrets.token_urlsafe(32)
        self._sessions[_digest(token)] = now + self.ttl
        return Login(Verdict.ADMITTED, token)

    def valid(self, token: str, now: float) -> bool:
        """Whether `token` names a live session; an expired one is ended."""
        if not token:
            return False
        key = _digest(token)
        expires = self._sessions.get(key)
        if expires is None:
            return False
        if now >= expires:
            del self._sessions[key]
            return False
        return True

    def logout(self, token: str) -> None:
        self._sessions.pop(_digest(token), None)

    def _expire(self, now: float) -> None:
        for key in [k for k, expires in self._sessions.items() if now >= expires]:
            del self._sessions[key]

    def __len__(self) -> int:
        return len(self._sessions)
