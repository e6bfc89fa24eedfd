"""Auth service settings: env vars ``MESHCAST_*`` or ``MESHCAST_CONFIG_FILE``.

Keys are PEM text or the path of a PEM file. ``verify_only_keys`` lists
public keys to keep publishing after a rotation, each a PEM (or path), or
``{"pem": ..., "kid": ...}`` when the old key had an explicit kid.

The gRPC API mints tokens for any user: it refuses to start without
``MESHCAST_API_KEY`` unless ``MESHCAST_API_INSECURE=true`` (logged as a warning).
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, Field, SecretStr, model_validator

from meshcast.common.apikey import KeyedSettings


class VerifyOnlyKey(BaseModel):
    pem: str
    kid: str = ""


class AuthSettings(KeyedSettings):
    service_name: str = "meshcast-auth"

    # gRPC API (port 0: any free port, read back after start); every call carries
    # ``authorization: apikey <api_key>`` (KeyedSettings: no key, no start, unless
    # api_insecure says so).
    grpc_host: str = "0.0.0.0"
    grpc_port: int = Field(9090, ge=0, le=65535)
    grpc_grace: float = Field(5.0, ge=0)
    # /health, /ready, /metrics and /.well-known/jwks.json.
    health_host: str = "0.0.0.0"
    health_port: int = Field(8092, ge=0, le=65535)

    # Signing: a private key (RS256, ES256/384/512 or EdDSA by its type) wins
    # over the HMAC secret (HS256) when both are set.
    signing_key: SecretStr = SecretStr("")
    signing_key_id: str = ""
    token_hmac_secret: SecretStr = SecretStr("")
    verify_only_keys: list[str | VerifyOnlyKey] = Field(default_factory=list)

    # Claims and lifetimes of issued tokens.
    token_audience: str = ""
    token_issuer: str = ""
    token_default_ttl: int = Field(3600, gt=0)
    token_max_ttl: int = Field(86400, gt=0)
    token_max_info_bytes: int = Field(16384, gt=0)
    token_max_channels: int = Field(128, ge=0)

    # Revocations: the KV bucket's entry lifetime, at least the longest token lifetime.
    revocation_ttl: int = Field(86400, gt=0)
    revocation_replicas: int = Field(1, ge=1, le=5)

    # NATS: the bound of every revocation or disconnect call is MESHCAST_NATS_TIMEOUT.

    @model_validator(mode="after")
    def _lifetimes(self) -> Self:
        if self.token_default_ttl > self.token_max_ttl:
            raise ValueError("token_default_ttl exceeds token_max_ttl")
        if self.token_max_ttl > self.revocation_ttl:
            # Otherwise a revocation would expire while the token it revokes is still valid.
            raise ValueError("token_max_ttl exceeds revocation_ttl")
        return self
