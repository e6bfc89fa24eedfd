"""History service settings: env vars ``MESHCAST_*`` or ``MESHCAST_CONFIG_FILE``."""

from __future__ import annotations

from pathlib import Path

from pydantic import ByteSize, Field

from meshcast.common.namespaces import MIN_HISTORY_BYTES
from meshcast.common.settings import ServiceSettings

from .streams import DEFAULT_STREAM_MAX_BYTES, DEFAULT_TOTAL_MAX_BYTES


class HistorySettings(ServiceSettings):
    service_name: str = "meshcast-history"
    namespaces_file: Path | None = None

    # Streams.
    history_replicas: int = Field(1, ge=1, le=5)
    history_storage: str = Field("file", pattern="^(file|memory)$")
    duplicate_window: float = Field(120.0, gt=0)
    # Bytes ("256MiB" or a number): the cap of a namespace's stream when its
    # `history_max_bytes` is 0, and what every history stream together may hold. Each
    # cap is reserved on every NATS server holding a replica (a stream that does not fit
    # is refused), so the total must leave room in JetStream's store (max_file_store, or
    # max_memory_store with memory storage) for the events stream and the KV buckets
    # (revocations, leases): one namespace can never fill the store and starve them.
    history_max_bytes: ByteSize = Field(ByteSize(DEFAULT_STREAM_MAX_BYTES), ge=MIN_HISTORY_BYTES, le=1 << 50)
    history_total_max_bytes: ByteSize = Field(ByteSize(DEFAULT_TOTAL_MAX_BYTES), ge=MIN_HISTORY_BYTES, le=1 << 50)

    # Serving.
    queue_group: str = "meshcast-history"
    max_concurrency: int = Field(256, ge=1)
    max_history_limit: int = Field(10_000, ge=1)
    # The most bytes one answer may hold (never more than the server's max_payload):
    # see `HistoryService` for what happens to publications past it.
    max_reply_bytes: int = Field(1 << 20, ge=16384)
    # Reads ride through a stream leader election (4-10 s): one attempt at a JetStream
    # read waits at most `history_read_attempt_timeout`; one that JetStream could not
    # answer is tried again, with backoff, for `history_read_deadline` seconds, and then
    # the request is a temporary error (100), never "not recovered". The gateways'
    # MESHCAST_HISTORY_TIMEOUT must exceed deadline + attempt timeout (20 > 15 + 2).
    history_read_deadline: float = Field(15.0, gt=0)
    history_read_attempt_timeout: float = Field(2.0, gt=0)
    health_port: int = Field(8090, ge=0, le=65535)
    health_host: str = "0.0.0.0"
