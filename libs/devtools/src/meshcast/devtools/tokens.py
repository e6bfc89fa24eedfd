"""HMAC connection tokens for development, signed with the stack's dev secret."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Any, Final

import jwt

from .runfolder import read_run_file

SECRET_ENV: Final = "MESHCAST_TOKEN_HMAC_SECRET"
SECRET_FILE: Final = "secret"


def dev_secret(run_dir: Path) -> str:
    """The stack's HMAC secret: `run_dir/secret`, created on first use (by `make run` only)."""
    path = run_dir / SECRET_FILE
    if not path.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            out.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def stored_secret(run_dir: Path) -> str:
    """The secret the running stack signs with: ``MESHCAST_TOKEN_HMAC_SECRET``, else what `make run` stored.

    Never made here: a new one would sign tokens the stack refuses (`NotStarted` instead)."""
    return os.environ.get(SECRET_ENV, "").strip() or read_run_file(run_dir, SECRET_FILE)


def connection_token(secret: str, user: str, ttl: float = 3600, info: dict[str, Any] | None = None) -> str:
    """A connection JWT (HS256) for `user`, valid for `ttl` seconds."""
    claims: dict[str, Any] = {"sub": user, "exp": int(time.time() + ttl)}
    if info is not None:
        claims["info"] = info
    return jwt.encode(claims, secret, algorithm="HS256")
