"""The gateway's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONNECTIONS = Gauge("meshcast_gateway_connections", "Open client connections.")
CHANNELS = Gauge("meshcast_gateway_channels", "Channels with at least one local subscriber.")
COMMANDS = Counter("meshcast_gateway_commands_total", "Client commands handled.", ["method"])
ERRORS = Counter("meshcast_gateway_reply_errors_total", "Commands answered with an error.", ["code"])
DISCONNECTS = Counter("meshcast_gateway_disconnects_total", "Connections closed by the server.", ["code"])
BUS_MESSAGES = Counter("meshcast_gateway_bus_messages_total", "Publications received from NATS.")
BAD_BUS_MESSAGES = Counter("meshcast_gateway_bad_bus_messages_total", "Undecodable messages on channel subjects.")
DELIVERIES = Counter("meshcast_gateway_deliveries_total", "Publications written to client sockets.")
WRITES_SKIPPED = Counter(
    "meshcast_gateway_writes_skipped_total",
    "Frames not written because the client's socket was closing or failed (by reason); that client only.",
    ["reason"],
)
FANOUT_FAILURES = Counter(
    "meshcast_gateway_fanout_failures_total", "Flushes that failed (a bug): history channels' clients resubscribe."
)
HANDSHAKES_DROPPED = Counter(
    "meshcast_gateway_handshakes_dropped_total", "TCP connections dropped: their IP had too many upgrades in progress."
)
PUBLISHES = Counter("meshcast_gateway_publishes_total", "Client publications sent to NATS.")
GAPS = Counter("meshcast_gateway_gaps_total", "Gaps found on a history channel's live path (filled from history).")
INSUFFICIENT_STATE = Counter(
    "meshcast_gateway_insufficient_state_total", "History channels whose clients were sent to resubscribe."
)
HISTORY_PUBLISHES = Counter("meshcast_gateway_history_publishes_total", "Publications stored in JetStream.")
EVENTS = Counter("meshcast_gateway_events_total", "Lifecycle events queued for the events stream.", ["kind"])
EVENTS_STORED = Counter("meshcast_gateway_events_stored_total", "Lifecycle events stored in the events stream.")
EVENTS_DROPPED = Counter(
    "meshcast_gateway_events_dropped_total",
    "Lifecycle events never stored (queue_full: a start or publication found the queue full; "
    "expired: queued when presence declared this gateway dead; refused: the stream refused it).",
    ["reason"],
)
EVENTS_QUEUED = Gauge("meshcast_gateway_events_queued", "Lifecycle events waiting to be stored.")
EVENTS_RETRIES = Counter(
    "meshcast_gateway_events_retries_total", "Batches of lifecycle events sent again (the stream did not ack them)."
)
COMMAND_SECONDS = Histogram(
    "meshcast_gateway_command_seconds",
    "Time to handle a client command, by method (the reply's encoding and write excluded).",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DELIVERY_LATENCY = Histogram(
    "meshcast_gateway_delivery_latency_seconds",
    "From a publication entering Meshcast (its time_ms) to its fan-out on this gateway; "
    "one observation per delivered batch (its oldest publication), never per receiver.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
HANDSHAKES_REJECTED = Counter(
    "meshcast_gateway_handshakes_rejected_total",
    "WebSocket upgrades refused before the handshake (origin, rate_limited, not_ready, at_capacity).",
    ["reason"],
)
DRAINING = Gauge("meshcast_gateway_draining", "1 while the gateway drains (stops accepting, disconnects its clients).")
