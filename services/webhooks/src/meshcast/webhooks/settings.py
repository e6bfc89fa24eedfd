"""Webhook relay settings: env vars ``MESHCAST_*`` or ``MESHCAST_CONFIG_FILE``.

One relay process serves one endpoint (`webhook_url`) under one name
(`webhook_name`: its durable consumer). More endpoints are more relays with
other names; each reads the stream on its own, so none waits for another.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from meshcast.bus.subjects import EVENT_KINDS
from meshcast.common.settings import ServiceSettings

# A secret shorter than this is a password, not an HMAC key.
MIN_SECRET_LENGTH: Final = 16


class WebhookSettings(ServiceSettings):
    service_name: str = "meshcast-webhooks"

    # Where every event is POSTed (http or https), and the HMAC-SHA256 key of its signature.
    webhook_url: str
    webhook_secret: SecretStr
    # Kinds to relay, comma-separated (`connect,disconnect`); empty: every kind.
    webhook_kinds: str = ""
    # This relay's durable consumer is `webhooks-<name>` (letters, digits, - and _).
    webhook_name: str = Field("default", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    # First creation of the durable only: `new` (events from now on) or `all` (every retained one).
    webhook_deliver: str = Field("new", pattern="^(new|all)$")

    # Each POST waits at most `webhook_timeout` s; a failed one is tried again after
    # `webhook_backoff_initial` s, doubling up to `webhook_backoff_max` (jittered by up to
    # half), until `webhook_max_attempts` POSTs failed: then the event is a dead letter.
    webhook_timeout: float = Field(5.0, gt=0, le=300)
    webhook_max_attempts: int = Field(8, ge=1, le=1000)
    webhook_backoff_initial: float = Field(0.5, gt=0)
    webhook_backoff_max: float = Field(60.0, gt=0)
    webhook_jitter: bool = True

    # At most this many events fetched and not yet acknowledged (the consumer's
    # max_ack_pending); POSTs in flight at once are bounded by the same number.
    webhook_max_in_flight: int = Field(256, ge=1, le=100_000)
    # The consumer's ack_wait: an event held longer (queued behind its channel, or
    # retried) is kept with a progress ack every third of it; a relay that died has its
    # unacknowledged events redelivered after it.
    webhook_ack_wait: float = Field(30.0, ge=1)
    # How long one try to store a dead letter waits for its ack (tried until stored).
    webhook_dead_letter_timeout: float = Field(5.0, gt=0)
    # Sharding by ordering key: relay `webhook_shard` of `webhook_shards` delivers the keys
    # that hash to it (its own durable, `webhooks-<name>-<shard>of<shards>`).
    webhook_shards: int = Field(1, ge=1, le=256)
    webhook_shard: int = Field(0, ge=0)

    health_port: int = Field(8095, ge=0, le=65535)
    health_host: str = "0.0.0.0"

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _long_secret(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(f"must be at least {MIN_SECRET_LENGTH} characters")
        return value

    @field_validator("webhook_kinds")
    @classmethod
    def _known_kinds(cls, value: str) -> str:
        unknown = [kind for kind in _split(value) if kind not in EVENT_KINDS]
        if unknown:
            raise ValueError(f"unknown event kinds {unknown}; known: {', '.join(EVENT_KINDS)}")
        return value

    @field_validator("webhook_backoff_max")
    @classmethod
    def _cap_above_start(cls, value: float, info: ValidationInfo) -> float:
        initial = info.data.get("webhook_backoff_initial")
        if initial is not None and value < initial:
            raise ValueError("must be at least webhook_backoff_initial")
        return value

    @field_validator("webhook_shard")
    @classmethod
    def _shard_in_range(cls, value: int, info: ValidationInfo) -> int:
        shards = info.data.get("webhook_shards")
        if shards is not None and value >= shards:
            raise ValueError("must be below webhook_shards")
        return value

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds to relay, in `EVENT_KINDS` order (all when none is named)."""
        wanted = set(_split(self.webhook_kinds))
        return tuple(kind for kind in EVENT_KINDS if not wanted or kind in wanted)

    @property
    def durable(self) -> str:
        base = f"webhooks-{self.webhook_name}"
        return base if self.webhook_shards == 1 else f"{base}-{self.webhook_shard}of{self.webhook_shards}"


def _split(value: str) -> list[str]:
    return [kind.strip() for kind in value.split(",") if kind.strip()]
