"""``python -m meshcast.history``: run one history service instance until SIGTERM."""

from __future__ import annotations

import sys

from meshcast.common.service import run_service

from .app import HistoryApp
from .settings import HistorySettings

if __name__ == "__main__":
    sys.exit(run_service("meshcast-history", HistorySettings, HistoryApp))
