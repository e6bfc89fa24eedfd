"""`make run`'s webhook relay: on when ``MESHCAST_WEBHOOK_URL`` is set, signed with
``MESHCAST_WEBHOOK_SECRET``, else with ``.run/webhook-secret``, made once by `make run`
(`make webhook-secret` prints it, for the receiver that checks the signatures)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from .apikey import dev_secret
from .runfolder import read_run_file

WEBHOOK_URL_ENV: Final = "MESHCAST_WEBHOOK_URL"
WEBHOOK_SECRET_ENV: Final = "MESHCAST_WEBHOOK_SECRET"
WEBHOOK_SECRET_FILE: Final = "webhook-secret"


def webhook_url() -> str:
    """Where `make run`'s relay POSTs the events; empty: no relay."""
    return os.environ.get(WEBHOOK_URL_ENV, "").strip()


def dev_webhook_secret(run_dir: Path) -> str:
    """The signing secret: the env var when set, else the file (created private on first use)."""
    return dev_secret(run_dir, WEBHOOK_SECRET_ENV, WEBHOOK_SECRET_FILE)


def stored_webhook_secret(run_dir: Path) -> str:
    """The running stack's secret, for `make webhook-secret`: the env var, else the file; never made here."""
    return os.environ.get(WEBHOOK_SECRET_ENV, "").strip() or read_run_file(run_dir, WEBHOOK_SECRET_FILE)
