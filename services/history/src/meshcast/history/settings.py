"""History service settings: env vars ``MESHCAST_*`` or ``MESHCAST_CONFIG_FILE``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from meshcast.common.settings import ServiceSettings


class HistorySettings(ServiceSettings):
    service_name: str = "meshcast-history"
    namespaces_file: Path | None = None

    # Streams.
    history_replicas: int = Field(1, ge=1, le=5)
    history_storage: str = Field("file", pattern="^(file|memory)$")
    duplicate_window: float = Field(120.0, gt=0)

    # Serving.
    queue_group: str = "meshcast-history"
    max_concurrency: int = Field(256, ge=1)
    max_history_limit: int = Field(10_000, ge=1)
    # How long start-up waits for JetStream (a new cluster elects its leader first).
    startup_timeout: float = Field(60.0, gt=0)
    health_port: int = Field(8090, ge=0, le=65535)
    health_host: str = "0.0.0.0"
