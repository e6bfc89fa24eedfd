"""Presence service settings: env vars ``MESHCAST_*`` or ``MESHCAST_CONFIG_FILE``."""

from __future__ import annotations

from pydantic import Field

from meshcast.common.settings import ServiceSettings


class PresenceSettings(ServiceSettings):
    service_name: str = "meshcast-presence"
    queue_group: str = "meshcast-presence"
    # A gateway silent this long is gone: its members leave.
    gateway_timeout: float = Field(15.0, gt=0)
    sweep_interval: float = Field(1.0, gt=0)
    # At start: how long to gather every gateway's snapshot before answering.
    startup_sync_wait: float = Field(1.0, ge=0)
    sync_timeout: float = Field(5.0, gt=0)
    sync_chunk: int = Field(1000, ge=1, le=10_000)
    # Members per presence answer message, and bytes of them (never more than the
    # server's max_payload, 1 MiB by default).
    query_chunk: int = Field(2000, ge=1, le=100_000)
    max_reply_bytes: int = Field(1 << 20, ge=16384)
    # Replicas of the small KV bucket that picks who announces a dead gateway's leaves.
    lease_replicas: int = Field(1, ge=1, le=5)
    # Tell the events stream (MESHCAST_EVENTS) when a gateway's epoch expires, retried
    # this long while the stream is unavailable (no events service: given up, logged).
    events_enabled: bool = True
    events_publish_deadline: float = Field(300.0, gt=0)
    health_port: int = Field(8091, ge=0, le=65535)
    health_host: str = "0.0.0.0"
