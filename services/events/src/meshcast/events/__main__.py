"""``python -m meshcast.events``: run one events service instance until SIGTERM."""

from __future__ import annotations

import sys

from meshcast.common.service import run_service

from .app import EventsApp
from .settings import EventsSettings

if __name__ == "__main__":
    sys.exit(run_service("meshcast-events", EventsSettings, EventsApp))
