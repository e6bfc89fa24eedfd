"""JWTs for tests, minted independently of the code under test (PyJWT).

Claims given by the caller win over the defaults (`exp` from `ttl`): a test
that needs an exact expiry passes ``exp=``.
"""

from __future__ import annotations

import time
from typing import Any

import jwt


def connection_jwt(key: Any, user: str, *, ttl: float = 3600, alg: str = "HS256", **claims: Any) -> str:
    """A connection token for `user`, valid for `ttl` seconds (negative: expired)."""
    return jwt.encode({"sub": user, "exp": int(time.time() + ttl), **claims}, key, algorithm=alg)


def subscription_jwt(key: Any, user: str, channel: str, *, ttl: float = 3600, alg: str = "HS256", **claims: Any) -> str:
    """A subscription token for `user` on `channel`, valid for `ttl` seconds."""
    return connection_jwt(key, user, ttl=ttl, alg=alg, channel=channel, **claims)
