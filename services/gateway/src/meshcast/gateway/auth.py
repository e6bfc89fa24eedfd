"""Connection token verification (JWT, HMAC), as a port with one implementation.

The algorithm list is pinned by configuration, never read from the token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

import jwt

from meshcast.protocol import DisconnectCode, DisconnectError, ErrorCode, ReplyError


@dataclass(frozen=True, slots=True)
class ConnectClaims:
    user: str
    expires_at: float | None
    info: bytes


class TokenVerifier(Protocol):
    def verify_connect(self, token: str) -> ConnectClaims: ...


class HmacTokenVerifier:
    """Verifies HS256/384/512 connection tokens signed with one shared secret."""

    def __init__(self, secret: str, algorithms: list[str], leeway: float = 0.0) -> None:
        self._secret = secret
        self._algorithms = [a for a in algorithms if a.startswith("HS")]
        self._leeway = leeway

    def verify_connect(self, token: str) -> ConnectClaims:
        if not self._secret:
            raise DisconnectError.of(DisconnectCode.INVALID_TOKEN)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=self._algorithms,
                leeway=self._leeway,
                options={"require": ["exp"], "verify_aud": False},
            )
        except jwt.ExpiredSignatureError as exc:
            raise ReplyError.of(ErrorCode.TOKEN_EXPIRED) from exc
        except jwt.InvalidTokenError as exc:
            raise DisconnectError.of(DisconnectCode.INVALID_TOKEN) from exc
        user = claims.get("sub", "")
        if not isinstance(user, str):
            raise DisconnectError.of(DisconnectCode.INVALID_TOKEN)
        info = claims.get("info")
        return ConnectClaims(
            user=user,
            expires_at=float(claims["exp"]),
            info=json.dumps(info, separators=(",", ":")).encode() if info is not None else b"",
        )
