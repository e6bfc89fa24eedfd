"""``python -m meshcast.webhooks``: relay the lifecycle events to one endpoint until SIGTERM."""

from __future__ import annotations

import sys

from meshcast.common.service import run_service

from .app import WebhooksApp
from .settings import WebhookSettings

if __name__ == "__main__":
    sys.exit(run_service("meshcast-webhooks", WebhookSettings, WebhooksApp))
