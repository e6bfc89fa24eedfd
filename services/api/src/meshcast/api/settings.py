"""Server API settings: env vars ``MESHCAST_*`` or ``MESHCAST_CONFIG_FILE``.

The API refuses to start without ``MESHCAST_API_KEY`` unless
``MESHCAST_API_INSECURE=true`` says, explicitly, that anyone who reaches
it may use it (logged as a warning at start).

The admin UI (``/admin``) is on only with ``MESHCAST_ADMIN_SECRET``; without
it every ``/admin`` path is 404.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from meshcast.common.apikey import KeyedSettings


class ApiSettings(KeyedSettings):
    service_name: str = "meshcast-api"

    # HTTP `/api/<method>` and gRPC `centrifugal.centrifugo.api.CentrifugoApi` (port 0: any free port).
    http_host: str = "0.0.0.0"
    http_port: int = Field(9000, ge=0, le=65535)
    grpc_host: str = "0.0.0.0"
    grpc_port: int = Field(10000, ge=0, le=65535)
    # At stop, requests being answered (gRPC and HTTP) get this long to finish.
    grpc_grace: float = Field(5.0, ge=0)
    # /health, /ready, /metrics.
    health_host: str = "0.0.0.0"
    health_port: int = Field(8093, ge=0, le=65535)

    # api_key / api_insecure: KeyedSettings.
    # The largest request body (HTTP) or message (gRPC); larger: 413 / RESOURCE_EXHAUSTED.
    api_max_body_bytes: int = Field(1 << 20, ge=1024)
    # Commands of one batch at most.
    api_max_batch: int = Field(1000, ge=1)
    # HTTP: the request line and headers at most (larger: 431), pipelined requests
    # waiting per connection, open connections (more: 503), the time a request's
    # head and body may take to arrive (408), and an idle keep-alive connection's life.
    http_max_head_bytes: int = Field(16384, ge=1024)
    http_max_pipelined: int = Field(32, ge=1)
    http_max_connections: int = Field(10000, ge=1)
    http_request_timeout: float = Field(30.0, gt=0)
    http_idle_timeout: float = Field(75.0, gt=0)

    namespaces_file: Path | None = None
    # A history publish rides through a stream election for up to this long.
    publish_deadline: float = Field(15.0, gt=0)
    # How long `channels` and `info` wait for the gateways' answers at most (they end
    # sooner once every gateway heard from within `gateway_timeout` answered).
    scatter_wait: float = Field(0.5, gt=0)
    gateway_timeout: float = Field(15.0, gt=0)
    # Live publishes arriving within this many seconds go to NATS in one socket write
    # (`meshcast.api.coalesce`); 0 (the default): one write each, as they come. On the
    # 2-core bench machine 0.5 ms changed neither requests/s nor p99 beyond the noise.
    publish_linger: float = Field(0.0, ge=0, le=0.1)
    # A namespace's epoch, read from the history service, is trusted this long.
    epoch_ttl: float = Field(5.0, gt=0)
    max_reply_bytes: int = Field(1 << 20, ge=16384)

    # The admin UI at /admin: off (404) without a secret. A login opens a session
    # (an HttpOnly cookie) of `admin_session_ttl` seconds, kept in this replica's memory.
    admin_secret: SecretStr = SecretStr("")
    admin_session_ttl: float = Field(8 * 3600.0, gt=0)
    admin_max_sessions: int = Field(64, ge=1)
    # Failed logins: at most this many within `admin_login_window` seconds, then every
    # login is 429 until the oldest failure leaves the window.
    admin_login_failures: int = Field(5, ge=1)
    admin_login_window: float = Field(60.0, gt=0)
    # Mark the session cookie Secure (set it when the UI is served over HTTPS).
    admin_cookie_secure: bool = False
