"""The entry point every service shares: settings, logs, traces, run until
SIGTERM, or until NATS closes the service's connection for good.

A nats-py connection that is closed (not merely reconnecting) never comes back:
the service would linger with no bus, its clients silently receiving nothing.
`run_service` watches every connection made with `connect_nats` (see
``meshcast.common.health.Liveness``): when one closes for good, /health answers
503, the reason is logged, the service stops as on SIGTERM (bounded by
`FAILED_STOP_SECONDS`) and the process exits 1, so Kubernetes or `make run`
restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol, TypeVar

import structlog
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError

from meshcast.bus import connect

from .health import Liveness, activated, current_liveness
from .logging import setup_logging
from .metrics import measure_loop_lag, set_build_info, watch_nats
from .settings import ConfigError, ServiceSettings
from .telemetry import flush_tracing, setup_tracing

S = TypeVar("S", bound=ServiceSettings)
T = TypeVar("T")

# How long a service whose NATS connection closed for good may take to stop
# (drain its clients, close its servers) before the process exits anyway.
FAILED_STOP_SECONDS: Final = 30.0
# Exit status of a service whose NATS connection closed for good.
EXIT_NATS_CLOSED: Final = 1


class NatsClosed(Exception):
    """A NATS connection of the service closed for good; the message says why."""


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def connect_nats(settings: ServiceSettings, **callbacks: Any) -> NatsClient:
    """The service's NATS connection as its settings describe it (servers,
    timeout, order, inbox prefix); `callbacks` are nats-py's *_cb hooks.

    Under `run_service` the connection is watched: closed for good, it fails
    the service's liveness (see the module docstring)."""
    nc = await connect(
        settings.nats_url,
        name=settings.service_name,
        connect_timeout=settings.nats_timeout,
        randomize=settings.nats_randomize,
        inbox_prefix=settings.nats_inbox_prefix,
        **callbacks,
    )
    liveness = current_liveness()
    if liveness is not None:
        liveness.watch(settings.service_name, nc)
    watch_nats(settings.service_name, nc)
    return nc


async def _unless_dead(work: Awaitable[T], liveness: Liveness) -> T:
    """`await work`, unless a NATS connection closes for good first (NatsClosed)."""
    task = asyncio.ensure_future(work)
    dead = asyncio.ensure_future(liveness.wait_dead())
    try:
        await asyncio.wait({task, dead}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        dead.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise NatsClosed(dead.result())


async def _run(app: Service, liveness: Liveness) -> int:
    """Start `app`, run it until SIGTERM/SIGINT (0) or a NATS connection closes for good (1)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    lag = asyncio.create_task(measure_loop_lag())
    try:
        await _unless_dead(app.start(), liveness)
        await _unless_dead(stop.wait(), liveness)
    except NatsClosed as exc:
        log = structlog.get_logger("meshcast.service")
        log.error("nats connection closed for good; exiting to be restarted", reason=str(exc))
        try:
            async with asyncio.timeout(FAILED_STOP_SECONDS):
                await app.stop()
        except Exception as stop_error:  # the bus is gone: a stop may fail on it, the exit must not
            log.warning("stop after nats closed failed", error=repr(stop_error))
        return EXIT_NATS_CLOSED
    finally:
        lag.cancel()
    liveness.stopping()
    await app.stop()
    return 0


def run_service(name: str, settings_type: type[S], build: Callable[[S], Service], *, uvloop: bool = False) -> int:
    """Run one service until SIGTERM/SIGINT. Exit 2 on bad configuration (the
    message names the field), 1 when NATS or the network fails it (a NATS
    connection closed for good included), 0 after a graceful stop."""
    try:
        settings = settings_type.load()
        setup_logging(settings.service_name, settings.log_level)
        # Before `build`: a service may decide at build time what to trace.
        provider = setup_tracing(settings.service_name, settings.otlp_endpoint, instance=settings.node_name)
        app = build(settings)  # validates files the settings name before anything starts
    except ConfigError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    set_build_info(name)
    with activated(Liveness()) as liveness:
        try:
            if uvloop:
                try:
                    import uvloop as fast_loop
                except ImportError:
                    return asyncio.run(_run(app, liveness))
                return fast_loop.run(_run(app, liveness))
            return asyncio.run(_run(app, liveness))
        except (OSError, TimeoutError, NatsError, JetStreamError) as exc:
            structlog.get_logger(name).error("service failed", error=str(exc))
            return 1
        finally:
            flush_tracing(provider)
