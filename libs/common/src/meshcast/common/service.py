"""The entry point every service shares: settings, logs, traces, run until SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import structlog
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError

from meshcast.bus import connect

from .logging import setup_logging
from .settings import ConfigError, ServiceSettings
from .telemetry import setup_tracing

S = TypeVar("S", bound=ServiceSettings)


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def connect_nats(settings: ServiceSettings, **callbacks: Any) -> NatsClient:
    """The service's NATS connection as its settings describe it (servers,
    timeout, order, inbox prefix); `callbacks` are nats-py's *_cb hooks."""
    return await connect(
        settings.nats_url,
        name=settings.service_name,
        connect_timeout=settings.nats_timeout,
        randomize=settings.nats_randomize,
        inbox_prefix=settings.nats_inbox_prefix,
        **callbacks,
    )


async def _run(app: Service) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    await stop.wait()
    await app.stop()


def run_service(name: str, settings_type: type[S], build: Callable[[S], Service], *, uvloop: bool = False) -> int:
    """Run one service until SIGTERM/SIGINT. Exit 2 on bad configuration (the
    message names the field), 1 when NATS or the network fails it, 0 after a
    graceful stop."""
    try:
        settings = settings_type.load()
        setup_logging(settings.service_name, settings.log_level)
        app = build(settings)  # validates files the settings name before anything starts
    except ConfigError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    setup_tracing(settings.service_name, settings.otlp_endpoint)
    try:
        if uvloop:
            try:
                import uvloop as fast_loop
            except ImportError:
                asyncio.run(_run(app))
            else:
                fast_loop.run(_run(app))
        else:
            asyncio.run(_run(app))
    except (OSError, TimeoutError, NatsError, JetStreamError) as exc:
        structlog.get_logger(name).error("service failed", error=str(exc))
        return 1
    return 0
