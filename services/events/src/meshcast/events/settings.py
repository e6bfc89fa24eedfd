"""Events service settings: env vars ``MESHCAST_*`` or ``MESHCAST_CONFIG_FILE``."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator

from meshcast.common.settings import ServiceSettings


class EventsSettings(ServiceSettings):
    service_name: str = "meshcast-events"

    # The stream MESHCAST_EVENTS: kept for `events_max_age` seconds and at most
    # `events_max_bytes` bytes (-1: no byte limit), the oldest dropped first; 3 replicas
    # in a cluster. A retried event is stored once within the duplicate window, which
    # must outlast a gateway's retries (its MESHCAST_EVENTS_ACK_TIMEOUT, 5 s) and the
    # presence gateway timeout (15 s) by far.
    events_replicas: int = Field(1, ge=1, le=5)
    events_storage: str = Field("file", pattern="^(file|memory)$")
    events_max_age: float = Field(7 * 86400.0, gt=0)
    events_max_bytes: int = Field(1 << 30, ge=-1)
    events_duplicate_window: float = Field(120.0, gt=0)

    # The ledger (see ledger.py): how long, in stream time, late ends and dead gateway
    # epochs are remembered; checkpointed into the KV bucket MESHCAST_EVENTS_LEDGER
    # every `checkpoint_interval` seconds when it changed (and at stop), kept there
    # `checkpoint_ttl` seconds, in values of at most `checkpoint_chunk` bytes.
    ledger_memory: float = Field(3600.0, gt=0)
    checkpoint_interval: float = Field(30.0, gt=0)
    checkpoint_ttl: float = Field(86400.0, gt=0)
    checkpoint_chunk: int = Field(256 * 1024, ge=1024, le=1 << 20)
    ledger_replicas: int = Field(1, ge=1, le=5)

    # Announcing: batches of at most this many events, each batch's acks awaited this long.
    publish_batch: int = Field(256, ge=1, le=10_000)
    publish_ack_timeout: float = Field(5.0, gt=0)

    health_port: int = Field(8094, ge=0, le=65535)
    health_host: str = "0.0.0.0"

    @model_validator(mode="after")
    def _windows_fit(self) -> Self:
        if self.events_duplicate_window > self.events_max_age:
            raise ValueError("events_duplicate_window cannot exceed events_max_age")
        if self.checkpoint_ttl < 4 * self.checkpoint_interval:
            raise ValueError("checkpoint_ttl must be at least 4 checkpoint intervals")
        return self
