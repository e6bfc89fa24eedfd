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
        self._jtis: set[str] = set()
        self._users: dict[str, float] = {}

    def apply(self, key: str, value: bytes | None) -> None:
        """A KV update (`value` None: the entry was deleted or expired)."""
        parsed = parse_key(key)
        if parsed is None:
            return
        kind, name = parsed
        if kind == "jti":
            if value is None:
                self._jtis.discard(name)
            else:
                self._jtis.add(name)
            return
        if value is None:
            self._users.pop(name, None)
            return
        try:
            self._users[name] = float(value.decode())
        except (ValueError, UnicodeDecodeError):
            return

    def revoked(self, user: str, jti: str, issued_at: float | None) -> bool:
        if jti and jti in self._jtis:
            return True
        before = self._users.get(user)
        return before is not None and (issued_at is None or issued_at < before)
