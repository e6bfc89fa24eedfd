"""``python -m meshcast.api``: run one server API instance until SIGTERM.

Exit 2 with a message naming the setting when the configuration is bad (no
API key and no explicit ``MESHCAST_API_INSECURE=true`` included), 1 when
NATS fails it, 0 after SIGTERM.
"""

from __future__ import annotations

import sys

from meshcast.common.service import run_service

from .app import ApiApp
from .settings import ApiSettings

if __name__ == "__main__":
    sys.exit(run_service("meshcast-api", ApiSettings, ApiApp, uvloop=True))
