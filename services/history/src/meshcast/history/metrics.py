"""The history service's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter("meshcast_history_requests_total", "History API requests.", ["endpoint"])
FAILURES = Counter("meshcast_history_failures_total", "Requests that failed on JetStream.", ["endpoint"])
LATENCY = Histogram("meshcast_history_request_seconds", "History API request latency.", ["endpoint"])
RETRIES = Counter(
    "meshcast_history_read_retries_total", "JetStream reads tried again (no leader, timeout).", ["endpoint"]
)
REFUSED_REPLIES = Counter(
    "meshcast_history_refused_replies_total", "Requests not answered: their reply subject was not an inbox."
)
