"""``python -m meshcast.presence``: run one presence instance until SIGTERM."""

from __future__ import annotations

import sys

from meshcast.common.service import run_service

from .app import PresenceApp
from .settings import PresenceSettings

if __name__ == "__main__":
    sys.exit(run_service("meshcast-presence", PresenceSettings, PresenceApp))
