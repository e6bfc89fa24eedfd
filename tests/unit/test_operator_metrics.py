"""The metrics every service shares (meshcast.common.metrics) and the history
service's JetStream usage: what they export, from what."""

from __future__ import annotations

import asyncio
import time
from importlib import metadata

from nats.js.api import AccountInfo, AccountLimits, APIStats
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from meshcast.common.metrics import measure_loop_lag, set_build_info, watch_nats
from meshcast.history.usage import usage_metrics


class FakeNats:
    def __init__(self, connected: bool, reconnects: int) -> None:
        self.is_connected = connected
        self.stats = {"reconnects": reconnects}


def _samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(REGISTRY).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_nats_state_and_reconnects_are_read_from_the_client_when_scraped() -> None:
    nc = FakeNats(connected=True, reconnects=2)
    watch_nats("unit-nats", nc)
    samples = _samples()
    assert samples["meshcast_nats_connected", (("connection", "unit-nats"),)] == 1
    assert samples["meshcast_nats_reconnects_total", (("connection", "unit-nats"),)] == 2
    nc.is_connected = False
    nc.stats["reconnects"] = 3
    samples = _samples()
    assert samples["meshcast_nats_connected", (("connection", "unit-nats"),)] == 0
    assert samples["meshcast_nats_reconnects_total", (("connection", "unit-nats"),)] == 3


def test_build_info_names_the_service_and_its_installed_version() -> None:
    set_build_info("meshcast-gateway")
    info = {labels: value for (name, labels), value in _samples().items() if name == "meshcast_build_info"}
    ((labels, value),) = info.items()
    assert value == 1
    assert dict(labels)["service"] == "meshcast-gateway"
    assert dict(labels)["version"] == metadata.version("meshcast-gateway")


async def test_a_blocked_event_loop_shows_as_lag() -> None:
    before = _samples().get(("meshcast_event_loop_lag_seconds_sum", ()), 0.0)
    task = asyncio.create_task(measure_loop_lag(interval=0.02))
    await asyncio.sleep(0.05)
    time.sleep(0.2)  # noqa: ASYNC251 - the point: a loop blocked by synchronous work
    await asyncio.sleep(0.05)
    task.cancel()
    assert _samples()["meshcast_event_loop_lag_seconds_sum", ()] - before >= 0.15


def _account(storage: int, limit: int, total: int, errors: int) -> AccountInfo:
    limits = AccountLimits(
        max_memory=-1,
        max_storage=limit,
        max_streams=-1,
        max_consumers=-1,
        max_ack_pending=-1,
        memory_max_stream_bytes=-1,
        storage_max_stream_bytes=-1,
        max_bytes_required=False,
    )
    return AccountInfo(
        memory=5,
        storage=storage,
        streams=2,
        consumers=1,
        limits=limits,
        api=APIStats(total=total, errors=errors),
    )


def _values(metrics: list[Metric]) -> dict[str, float]:
    return {sample.name: sample.value for metric in metrics for sample in metric.samples}


def test_jetstream_usage_exports_the_accounts_storage_limit_and_api_errors() -> None:
    values = _values(list(usage_metrics(_account(storage=900, limit=1000, total=50, errors=4))))
    assert values == {
        "meshcast_jetstream_storage_bytes": 900,
        "meshcast_jetstream_storage_limit_bytes": 1000,
        "meshcast_jetstream_memory_bytes": 5,
        "meshcast_jetstream_streams": 2,
        "meshcast_jetstream_api_requests_total": 50,
        "meshcast_jetstream_api_errors_total": 4,
    }


def test_an_account_without_a_storage_limit_exports_minus_one() -> None:
    values = _values(list(usage_metrics(_account(storage=900, limit=-1, total=0, errors=0))))
    assert values["meshcast_jetstream_storage_limit_bytes"] == -1
