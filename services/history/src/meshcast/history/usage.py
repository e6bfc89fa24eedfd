"""JetStream usage of the Meshcast account, polled by the history service (which owns
the streams) and exported with its metrics, so no NATS exporter is needed for the
two alerts that watch JetStream itself:

- ``meshcast_jetstream_storage_bytes`` / ``meshcast_jetstream_storage_limit_bytes``
  (file storage used, and the account's limit; -1 when the account has none, and then
  only the server's own ``max_file_store`` bounds it, which a client cannot read);
  ``meshcast_jetstream_memory_bytes``, ``meshcast_jetstream_streams``.
- ``meshcast_jetstream_api_requests_total`` / ``meshcast_jetstream_api_errors_total``:
  the server's own counts of the account's JetStream API calls and of those it
  answered with an error (every client of the account, not this service alone).

The values are the server's, as of the last poll (`INTERVAL`): every history replica
reports the same numbers, so aggregate them with ``max``, not ``sum``. Nothing is
exported before the first answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Final

import structlog
from nats.errors import Error as NatsError
from nats.js.api import AccountInfo
from nats.js.client import JetStreamContext
from nats.js.errors import Error as JetStreamError
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = structlog.get_logger(__name__)

# Seconds between two polls of the account's JetStream usage.
INTERVAL: Final = 15.0


def usage_metrics(info: AccountInfo) -> Iterator[Metric]:
    """The exported metrics of one account info answer."""
    yield GaugeMetricFamily("meshcast_jetstream_storage_bytes", "JetStream file storage used.", value=info.storage)
    limit = info.limits.max_storage if info.limits.max_storage is not None else -1
    yield GaugeMetricFamily(
        "meshcast_jetstream_storage_limit_bytes", "The account's JetStream file storage limit (-1: none).", value=limit
    )
    yield GaugeMetricFamily("meshcast_jetstream_memory_bytes", "JetStream memory storage used.", value=info.memory)
    yield GaugeMetricFamily("meshcast_jetstream_streams", "Streams in the account.", value=info.streams)
    yield CounterMetricFamily(
        "meshcast_jetstream_api_requests", "JetStream API requests of the account.", value=info.api.total
    )
    yield CounterMetricFamily(
        "meshcast_jetstream_api_errors", "JetStream API requests answered with an error.", value=info.api.errors
    )


class JetStreamUsage(Collector):
    """Polls `account_info` every `interval` seconds; collects the last answer."""

    def __init__(self, js: JetStreamContext, interval: float = INTERVAL) -> None:
        self._js = js
        self._interval = interval
        self._info: AccountInfo | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        with contextlib.suppress(ValueError):  # already registered (a restarted app in one process)
            REGISTRY.register(self)
        self._task = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(KeyError):
            REGISTRY.unregister(self)

    def collect(self) -> Iterator[Metric]:
        if self._info is not None:
            yield from usage_metrics(self._info)

    async def _poll(self) -> None:
        while True:
            try:
                self._info = await self._js.account_info()
            except (NatsError, JetStreamError, TimeoutError) as exc:
                log.debug("jetstream account info failed", error=repr(exc))
            await asyncio.sleep(self._interval)
