"""The server API key of `make run`: ``MESHCAST_API_KEY``, else ``.run/api-key``, made once by `make run`."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Final

from .runfolder import read_run_file

API_KEY_ENV: Final = "MESHCAST_API_KEY"
API_KEY_FILE: Final = "api-key"


def dev_api_key(run_dir: Path) -> str:
    """The key the stack's API requires: the env var when set, else the file (created private on first use)."""
    configured = os.environ.get(API_KEY_ENV, "").strip()
    if configured:
        return configured
    path = run_dir / API_KEY_FILE
    if not path.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            out.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def stored_api_key(run_dir: Path) -> str:
    """The key of the running stack, for `make api-key`: the env var, else the file; never made here."""
    return os.environ.get(API_KEY_ENV, "").strip() or read_run_file(run_dir, API_KEY_FILE)
