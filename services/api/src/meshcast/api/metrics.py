"""Prometheus metrics of the server API (served on the health port's /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

CALLS = Counter("meshcast_api_calls_total", "Server API calls by method and reply code (0: ok)", ["method", "code"])
DURATION = Histogram(
    "meshcast_api_call_seconds",
    "Server API call duration by method",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
LIVE_LOST = Counter(
    "meshcast_api_live_publishes_lost_total",
    "Live publishes answered, then refused by NATS when handed over (meshcast.api.coalesce)",
)
