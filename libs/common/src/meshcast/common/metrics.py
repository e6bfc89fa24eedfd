"""Prometheus metrics: one registry a process, rendered for ``/metrics``.

Besides `render`, the metrics every service shares, set up by `run_service`
and `connect_nats` (``meshcast.common.service``), so each service's own
module holds only what is its own:

- ``meshcast_build_info{service, version, python}``: always 1; which build runs.
- ``meshcast_nats_connected{connection}`` (1 connected, 0 disconnected or
  reconnecting) and ``meshcast_nats_reconnects_total{connection}``: read from
  nats-py's client at scrape time, nothing on the message path.
- ``meshcast_event_loop_lag_seconds``: how late a timer of the event loop
  fires, sampled twice a second: a loop blocked by CPU-bound work delays
  every client, command and heartbeat of the process alike.
"""

from __future__ import annotations

import asyncio
import platform
from collections.abc import Iterator
from importlib import metadata
from typing import Final, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# How often the event loop's lag is sampled.
LOOP_LAG_INTERVAL: Final = 0.5

BUILD = Info("meshcast_build", "The running build: service, version, Python.")
LOOP_LAG = Histogram(
    "meshcast_event_loop_lag_seconds",
    "How much later than asked the event loop ran a timer (sampled twice a second).",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


def render(registry: CollectorRegistry = REGISTRY) -> tuple[bytes, str]:
    """The exposition text and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


def set_build_info(service: str) -> None:
    """Label `meshcast_build_info` with the service and the installed meshcast version."""
    try:
        version = metadata.version(service)
    except metadata.PackageNotFoundError:
        version = "unknown"
    BUILD.info({"service": service, "version": version, "python": platform.python_version()})


class NatsClient(Protocol):
    """What the NATS metrics read of a nats-py client."""

    @property
    def is_connected(self) -> bool: ...

    @property
    def stats(self) -> dict[str, int]: ...


class _NatsCollector(Collector):
    """The state of every watched NATS connection, read when scraped."""

    def __init__(self) -> None:
        self._connections: dict[str, NatsClient] = {}

    def watch(self, name: str, nc: NatsClient) -> None:
        self._connections[name] = nc  # a reconnected service's new client replaces its old one

    def collect(self) -> Iterator[Metric]:
        connected = GaugeMetricFamily(
            "meshcast_nats_connected", "1 while connected to NATS, 0 while reconnecting.", labels=["connection"]
        )
        reconnects = CounterMetricFamily(
            "meshcast_nats_reconnects", "Times the NATS connection was re-established.", labels=["connection"]
        )
        for name, nc in self._connections.items():
            connected.add_metric([name], 1.0 if nc.is_connected else 0.0)
            reconnects.add_metric([name], float(nc.stats.get("reconnects", 0)))
        yield connected
        yield reconnects


_NATS = _NatsCollector()
REGISTRY.register(_NATS)


def watch_nats(name: str, nc: NatsClient) -> None:
    """Export `nc`'s connection state and reconnects under ``connection=name``."""
    _NATS.watch(name, nc)


async def measure_loop_lag(interval: float = LOOP_LAG_INTERVAL) -> None:
    """Sample the running loop's lag into `LOOP_LAG` until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time() + interval
        await asyncio.sleep(interval)
        LOOP_LAG.observe(max(0.0, loop.time() - asked))
