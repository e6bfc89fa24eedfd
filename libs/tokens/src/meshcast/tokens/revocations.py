"""Where revocations live: a NATS KV bucket every gateway watches.

- ``jti.<b64 jti>``: that token is revoked (value: revocation time, unix s).
- ``user.<b64 user>``: every token of that user issued (``iat``) before the
  value's unix time is revoked.

Keys are base64url so any jti or user id fits KV's key alphabet. Entries
expire with the bucket's TTL (the longest token lifetime worth remembering).
"""

from __future__ import annotations

import base64

BUCKET = "MESHCAST_REVOCATIONS"


def _b64(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=") or "_"


def _unb64(value: str) -> str:
    if value == "_":
        return ""
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()


def jti_key(jti: str) -> str:
    return f"jti.{_b64(jti)}"


def user_key(user: str) -> str:
    return f"user.{_b64(user)}"


def parse_key(key: str) -> tuple[str, str] | None:
    """("jti" | "user", value) for a revocation key; None for anything else."""
    kind, _, encoded = key.partition(".")
    if kind not in ("jti", "user") or not encoded:
        return None
    try:
        return kind, _unb64(encoded)
    except (ValueError, UnicodeDecodeError):
        return None


class Revocations:
    """The revocations a gateway knows (fed by a KV watch), checked without I/O."""

    def __init__(self) -> None:
        # jti -> when it was revoked; user -> tokens issued before this are revoked.
        self._jtis: dict[str, float] = {}
        self._users: dict[str, float] = {}

    def apply(self, key: str, value: bytes | None) -> None:
        """A KV update (`value` None: the entry was deleted or expired)."""
        parsed = parse_key(key)
        if parsed is None:
            return
        kind, name = parsed
        table = self._jtis if kind == "jti" else self._users
        if value is None:
            table.pop(name, None)
            return
        try:
            table[name] = float(value.decode())
        except (ValueError, UnicodeDecodeError):
            if kind == "jti":
                table[name] = float("inf")  # revoked all the same; kept until deleted

    def forget_older_than(self, cutoff: float) -> int:
        """Drop revocations made before `cutoff` (the bucket has expired them by now:
        expiry by age sends watchers no delete). Returns how many were dropped."""
        dropped = 0
        for table in (self._jtis, self._users):
            for name in [n for n, at in table.items() if at < cutoff]:
                del table[name]
                dropped += 1
        return dropped

    def __len__(self) -> int:
        return len(self._jtis) + len(self._users)

    def revoked(self, user: str, jti: str, issued_at: float | None) -> bool:
        if jti and jti in self._jtis:
            return True
        before = self._users.get(user)
        return before is not None and (issued_at is None or issued_at < before)
