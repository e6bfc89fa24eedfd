"""``python -m meshcast.auth``: run one auth service instance until SIGTERM.

Exit 2 with a message naming the setting when the configuration is bad (an
unreadable or unusable key included), 1 when NATS fails it, 0 after SIGTERM.
"""

from __future__ import annotations

import sys

from meshcast.common.service import run_service

from .app import AuthApp
from .settings import AuthSettings

if __name__ == "__main__":
    sys.exit(run_service("meshcast-auth", AuthSettings, AuthApp))
