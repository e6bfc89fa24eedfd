"""The events service's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

APPLIED = Counter("meshcast_events_applied_total", "Stream messages applied to the ledger.", ["kind"])
ANNOUNCED = Counter("meshcast_events_announced_total", "Announcements stored by this instance.", ["kind"])
BAD = Counter("meshcast_events_bad_messages_total", "Stream messages that are not events.")
CONNECTIONS = Gauge("meshcast_events_connections", "Connections the stream says are open.")
SUBSCRIPTIONS = Gauge("meshcast_events_subscriptions", "Subscriptions the stream says are open.")
CHANNELS = Gauge("meshcast_events_occupied_channels", "Channels with at least one subscriber anywhere.")
PENDING = Gauge("meshcast_events_pending", "Announcements derived and not yet seen in the stream.")
LAG = Gauge("meshcast_events_lag", "Stream messages not yet applied (as of the last one applied).")
CHECKPOINTS = Counter("meshcast_events_checkpoints_total", "Ledger checkpoints written.")
GAPS = Counter("meshcast_events_gaps_total", "Starts where the stream had dropped messages the ledger had not applied.")
RETRIES = Counter("meshcast_events_publish_retries_total", "Batches of announcements sent again.")
