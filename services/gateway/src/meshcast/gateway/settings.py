"""Gateway settings: env vars ``MESHCAST_*`` or the file in ``MESHCAST_CONFIG_FILE``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from meshcast.common.settings import ServiceSettings

from .forwarded import parse_networks
from .presence import LEAVES_FLUSH_SECONDS


class GatewaySettings(ServiceSettings):
    service_name: str = "meshcast-gateway"

    gateway_host: str = "0.0.0.0"
    gateway_port: int = Field(8000, ge=0, le=65535)
    websocket_path: str = "/connection/websocket"
    namespaces_file: Path | None = None

    # Connection and subscription tokens (JWT). Each key allows only the
    # algorithms of its kind: HS* for the secret, RS*/PS*, ES* or EdDSA for
    # public keys (PEM text or a PEM file path), whatever the JWKS declares.
    token_hmac_secret: str = ""
    token_public_keys: list[str] = Field(default_factory=list)
    token_jwks_url: str = ""
    token_jwks_refresh_interval: float = Field(300.0, gt=0)
    token_audience: str = ""
    token_issuer: str = ""
    token_leeway: float = Field(0.0, ge=0)

    # Handshake and limits.
    allowed_origins: list[str] = Field(default_factory=list)
    handshake_timeout: float = Field(10.0, gt=0)
    listen_backlog: int = Field(4096, ge=1)
    # Open WebSockets; past it a handshake gets 503 (the client tries another gateway).
    # Sized to the memory limit (README "Sizing": 128 MiB + n x 20.2 KiB x 1.5): 60,000
    # fits the prod overlay's 2 GiB; each overlay sets its own.
    max_connections: int = Field(60_000, ge=1)
    max_message_size: int = Field(65_536, ge=256)
    max_commands_per_frame: int = Field(100, ge=1)
    max_channels_per_connection: int = Field(128, ge=1)
    max_channel_length: int = Field(255, ge=1)
    write_buffer_limit: int = Field(4 * 1024 * 1024, ge=1024)
    # Commands a connection may send: a rate with a burst; over it, error 111,
    # and after this many refusals within the window, disconnect 3013.
    command_rate: float = Field(1000.0, gt=0)
    command_burst: int = Field(2000, ge=1)
    command_refusals_before_disconnect: int = Field(100, ge=1)
    command_refusal_window: float = Field(10.0, gt=0)
    # An rpc method name is one NATS subject token once escaped: bounded like a channel's.
    max_rpc_method_length: int = Field(255, ge=1, le=1024)
    # WebSocket upgrades in progress per client IP (a slowloris holds them open for
    # the handshake timeout); over it, new TCP connections from that IP are dropped.
    max_handshakes_per_ip: int = Field(1000, ge=1)
    # New connections per client IP (rate a second, burst), and connections per user (0: no limit).
    ip_connect_rate: float = Field(500.0, gt=0)
    ip_connect_burst: int = Field(5000, ge=1)
    max_connections_per_user: int = Field(0, ge=0)
    # Proxies (an Ingress, a load balancer) whose X-Forwarded-For names the client:
    # comma-separated CIDRs, none by default. From any other peer the header is ignored.
    # The client's address (see forwarded.py) is what the per-IP limits count, what the
    # logs and the connect event show; a trusted proxy's upgrades in progress are not
    # counted against it by max_handshakes_per_ip (they are its many clients').
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # permessage-deflate: off by default; when on, max_message_size bounds the
    # decompressed message, so a compression bomb is refused with 1009.
    websocket_compression: bool = False

    # Heartbeats (client protocol v2: server pings, client pongs).
    ping_interval: float = Field(25.0, gt=0)
    pong_timeout: float = Field(8.0, gt=0)
    # SDKs refresh when the ttl runs out, not before: an expired connection or
    # subscription is closed only this long after its expiry (Centrifugo's
    # client_expired_close_delay is 25 s too).
    expiry_grace: float = Field(25.0, ge=0)

    # Decisions delegated to a backend over NATS (meshcast.proxy.v1.*): connect
    # without a token (cookies...), refresh of such connections.
    proxy_connect: bool = False
    proxy_refresh: bool = False
    proxy_timeout: float = Field(3.0, gt=0)
    # Handshake headers passed to the connect proxy (case-insensitive).
    proxy_headers: list[str] = Field(
        default_factory=lambda: ["Cookie", "Authorization", "User-Agent", "Origin", "X-Forwarded-For", "X-Real-IP"]
    )
    # A proxied connection is refreshed this many seconds before it expires.
    proxy_refresh_margin: float = Field(10.0, ge=0)

    # Revocations: how often to look again for the auth service's bucket while it is missing.
    revocations_retry_interval: float = Field(1.0, gt=0)
    # How long the auth service keeps a revocation (its MESHCAST_REVOCATION_TTL): older ones are forgotten.
    revocation_ttl: float = Field(86400.0, gt=0)

    # How long a subscribe (position, recovery), a history command or a gap fill waits
    # for the history service: longer than its MESHCAST_HISTORY_READ_DEADLINE plus one
    # read attempt (15 + 2 s by default), so that the service, which rides through a
    # JetStream election and then answers a temporary error, answers first.
    history_timeout: float = Field(20.0, gt=0)
    # How long a client's publish into a history channel is retried (same Nats-Msg-Id,
    # stored once) while its stream elects a leader, before a temporary error 100.
    publish_deadline: float = Field(15.0, gt=0)

    # Presence: how often this gateway tells presence instances it is alive.
    presence_heartbeat_interval: float = Field(5.0, gt=0)
    # The most bytes one reply this gateway sends over NATS may hold (a presence snapshot
    # chunk); never more than the server's max_payload.
    max_reply_bytes: int = Field(1 << 20, ge=16384)

    # Lifecycle events to the events stream (MESHCAST_EVENTS, owned by the events service):
    # at most `events_queue_size` queued (a full queue drops new connects, subscribes and
    # publications, never their ends: see gateway/events.py), sent `events_batch` at a
    # time, each batch's acks awaited `events_ack_timeout` before it is sent again.
    events_enabled: bool = True
    events_queue_size: int = Field(10_000, ge=1)
    events_batch: int = Field(256, ge=1, le=10_000)
    events_ack_timeout: float = Field(5.0, gt=0)
    # At shutdown: how long the events of the drained connections may take to be stored.
    events_stop_timeout: float = Field(5.0, ge=0)

    # Shutdown: the clients are closed (3001, reconnect) evenly over `drain_seconds`, a
    # batch every `drain_tick` seconds (see drain.py), so the other gateways see their
    # reconnects at an even rate however many there are.
    drain_seconds: float = Field(10.0, ge=0)
    drain_tick: float = Field(0.05, gt=0, le=10)
    # How long a close handshake may take; also how long a client answered with a connect
    # error has to close its socket before it is dropped (see connection.py).
    close_timeout: float = Field(2.0, gt=0)

    def stop_seconds(self) -> float:
        """The longest SIGTERM may take to end the process (`Gateway.stop`): the drain, the
        close handshakes (`wait_closed`, then the server's twice), the events' and the
        leaves' flush, the NATS close. Kubernetes' terminationGracePeriodSeconds (after the
        preStop sleep) and compose's stop_grace_period must cover it (tests/deploy)."""
        return (
            self.drain_seconds
            + 3 * self.close_timeout
            + self.events_stop_timeout
            + LEAVES_FLUSH_SECONDS
            + self.nats_timeout
        )

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _cidrs(cls, value: Any) -> Any:
        """A comma-separated string (the environment), a JSON list, or a list (a file)."""
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else [v for v in text.split(",") if v.strip()]
        if isinstance(value, list):
            return [str(network) for network in parse_networks(str(v) for v in value)]
        return value
