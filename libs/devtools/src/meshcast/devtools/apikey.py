"""The server API's secrets of `make run`, each an env var, else a file in ``.run/``
made once by `make run`: the API key (``MESHCAST_API_KEY``, ``.run/api-key``) and
the admin UI's secret (``MESHCAST_ADMIN_SECRET``, ``.run/admin-secret``)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Final

from .runfolder import read_run_file

API_KEY_ENV: Final = "MESHCAST_API_KEY"
API_KEY_FILE: Final = "api-key"
ADMIN_SECRET_ENV: Final = "MESHCAST_ADMIN_SECRET"
ADMIN_SECRET_FILE: Final = "admin-secret"


def dev_secret(run_dir: Path, env: str, name: str) -> str:
    """The env var when set, else the file `name` of `run_dir` (created private on first use)."""
    configured = os.environ.get(env, "").strip()
    if configured:
        return configured
    path = run_dir / name
    if not path.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            out.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def dev_api_key(run_dir: Path) -> str:
    """The key the stack's API requires."""
    return dev_secret(run_dir, API_KEY_ENV, API_KEY_FILE)


def dev_admin_secret(run_dir: Path) -> str:
    """The secret the stack's admin UI (`/admin`) logs in with."""
    return dev_secret(run_dir, ADMIN_SECRET_ENV, ADMIN_SECRET_FILE)


def stored_api_key(run_dir: Path) -> str:
    """The key of the running stack, for `make api-key`: the env var, else the file; never made here."""
    return os.environ.get(API_KEY_ENV, "").strip() or read_run_file(run_dir, API_KEY_FILE)


def stored_admin_secret(run_dir: Path) -> str:
    """The admin secret of the running stack, for `make admin-secret`: the env var, else the file; never made here."""
    return os.environ.get(ADMIN_SECRET_ENV, "").strip() or read_run_file(run_dir, ADMIN_SECRET_FILE)
