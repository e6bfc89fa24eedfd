"""The webhook relay's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DELIVERED = Counter("meshcast_webhooks_delivered_total", "Events the endpoint answered 2xx.", ["kind"])
RETRIES = Counter("meshcast_webhooks_retries_total", "POSTs tried again after a failure.", ["kind"])
DEAD_LETTERS = Counter(
    "meshcast_webhooks_dead_letters_total", "Events given up on and stored as dead letters.", ["kind"]
)
FAILURES = Counter("meshcast_webhooks_failed_posts_total", "POSTs that failed (non-2xx, timeout, network).", ["kind"])
LATENCY = Histogram(
    "meshcast_webhooks_post_seconds",
    "Time of one POST to the endpoint, by outcome.",
    ["outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
HELD = Gauge("meshcast_webhooks_held", "Events fetched and not yet acknowledged (bounded by max_in_flight).")
SKIPPED = Counter("meshcast_webhooks_skipped_total", "Events of another shard, acknowledged unseen.")
BAD = Counter("meshcast_webhooks_bad_messages_total", "Stream messages that are not events (terminated).")
