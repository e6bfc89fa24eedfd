"""HMAC connection tokens for development, signed with the stack's dev secret."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import jwt


def dev_secret(run_dir: Path) -> str:
    """The stack's HMAC secret: `run_dir/secret`, created on first use."""
    path = run_dir / "secret"
    if not path.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def connection_token(secret: str, user: str, ttl: float = 3600, info: dict[str, Any] | None = None) -> str:
    """A connection JWT (HS256) for `user`, valid for `ttl` seconds."""
    claims: dict[str, Any] = {"sub": user, "exp": int(time.time() + ttl)}
    if info is not None:
        claims["info"] = info
    return jwt.encode(claims, secret, algorithm="HS256")
