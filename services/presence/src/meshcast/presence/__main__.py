"""``python -m meshcast.presence``: run one presence instance until SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys

import structlog
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError

from meshcast.common.logging import setup_logging
from meshcast.common.settings import ConfigError
from meshcast.common.telemetry import setup_tracing

from .app import PresenceApp
from .settings import PresenceSettings


async def _run(app: PresenceApp) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    await stop.wait()
    await app.stop()


def main() -> int:
    try:
        settings = PresenceSettings.load()
        setup_logging(settings.service_name, settings.log_level)
    except ConfigError as exc:
        print(f"meshcast-presence: {exc}", file=sys.stderr)
        return 2
    setup_tracing(settings.service_name, settings.otlp_endpoint)
    try:
        asyncio.run(_run(PresenceApp(settings)))
    except (OSError, TimeoutError, NatsError, JetStreamError) as exc:
        structlog.get_logger("meshcast.presence").error("presence failed", error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
