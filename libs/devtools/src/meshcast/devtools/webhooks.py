"""`make run`'s webhook relay: on when ``MESHCAST_WEBHOOK_URL`` is set, signed with
``MESHCAST_WEBHOOK_SECRET``, else with ``.run/webhook-secret``, made once by `make run`
(`make webhook-secret` prints it, for the receiver that checks the signatures)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Final

from .runfolder import read_run_file

WEBHOOK_URL_ENV: Final = "MESHCAST_WEBHOOK_URL"
WEBHOOK_SECRET_ENV: Final = "MESHCAST_WEBHOOK_SECRET"
WEBHOOK_SECRET_FILE: Final = "webhook-secret"


def webhook_url() -> str:
    """Where `make run`'s relay POSTs the events; empty: no relay."""
    return os.environ.get(WEBHOOK_URL_ENV, "").strip()


def dev_webhook_secret(run_dir: Path) -> str:
    """The signing secret: the env var when set, else the file (created private on first use)."""
    configured = os.environ.get(WEBHOOK_SECRET_ENV, "").strip()
    if configured:
        return configured
    path = run_dir / WEBHOOK_SECRET_FILE
    if not path.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            out.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def stored_webhook_secret(run_dir: Path) -> str:
    """The running stack's secret, for `make webhook-secret`: the env var, else the file; never made here."""
    return os.environ.get(WEBHOOK_SECRET_ENV, "").strip() or read_run_file(run_dir, WEBHOOK_SECRET_FILE)
