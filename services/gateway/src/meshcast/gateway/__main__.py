"""``python -m meshcast.gateway``: run one gateway until SIGTERM (drains) or SIGINT."""

from __future__ import annotations

import sys

from meshcast.common.service import run_service

from .app import Gateway
from .settings import GatewaySettings

if __name__ == "__main__":
    sys.exit(run_service("meshcast-gateway", GatewaySettings, Gateway, uvloop=True))
