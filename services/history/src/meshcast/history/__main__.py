"""``python -m meshcast.history``: run one history service instance until SIGTERM."""

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

from .app import HistoryApp
from .settings import HistorySettings


async def _run(app: HistoryApp) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    await stop.wait()
    await app.stop()


def main() -> int:
    try:
        settings = HistorySettings.load()
        setup_logging(settings.service_name, settings.log_level)
        app = HistoryApp(settings)
    except ConfigError as exc:
        print(f"meshcast-history: {exc}", file=sys.stderr)
        return 2
    setup_tracing(settings.service_name, settings.otlp_endpoint)
    try:
        asyncio.run(_run(app))
    except (OSError, TimeoutError, NatsError, JetStreamError) as exc:
        structlog.get_logger("meshcast.history").error("history failed", error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
