"""``python -m meshcast.gateway``: run one gateway until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal
import sys

import structlog
from nats.errors import Error as NatsError

from meshcast.common.logging import setup_logging
from meshcast.common.settings import ConfigError
from meshcast.common.telemetry import setup_tracing

from .app import Gateway
from .settings import GatewaySettings


async def _run(gateway: Gateway) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await gateway.start()
    await stop.wait()
    await gateway.stop()


def main() -> int:
    try:
        settings = GatewaySettings.load()
        setup_logging(settings.service_name, settings.log_level)
        gateway = Gateway(settings)  # validates the namespaces file before anything starts
    except ConfigError as exc:
        print(f"meshcast-gateway: {exc}", file=sys.stderr)
        return 2
    setup_tracing(settings.service_name, settings.otlp_endpoint)
    try:
        import uvloop
    except ImportError:
        asyncio.run(_run(gateway))
    else:
        uvloop.run(_run(gateway))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (OSError, TimeoutError, NatsError) as exc:
        structlog.get_logger("meshcast.gateway").error("gateway failed", error=str(exc))
        sys.exit(1)
