"""The presence service's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

MEMBERS = Gauge("meshcast_presence_members", "Members known to this instance, across channels.")
EVENTS = Counter("meshcast_presence_events_total", "Join and leave events applied.", ["kind"])
SYNCS = Counter("meshcast_presence_syncs_total", "Gateway snapshots applied.")
EXPIRED_GATEWAYS = Counter("meshcast_presence_expired_gateways_total", "Gateways whose heartbeats stopped.")
QUERIES = Counter("meshcast_presence_queries_total", "Presence queries answered.", ["kind"])
REFUSED_REPLIES = Counter(
    "meshcast_presence_refused_replies_total", "Requests not answered: their reply subject was not an inbox."
)
EVENTS_NOT_TOLD = Counter(
    "meshcast_presence_expiries_not_stored_total", "Gateway expiries the events stream did not store in time."
)
