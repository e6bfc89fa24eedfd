"""The claims of connection and subscription tokens (client protocol v2)."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from .verifier import TokenInvalid


def _info(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() if value is not None else b""


def _subs_data(options: Any) -> bytes:
    """The `data` (raw JSON) or `b64data` of a `subs` entry: given to the client in its connect result."""
    if not isinstance(options, dict):
        return b""
    if "b64data" in options:
        encoded = options["b64data"]
        try:
            return base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else b""
        except binascii.Error as exc:
            raise TokenInvalid("claim subs b64data is not base64") from exc
    return _info(options.get("data"))


def _exp(claims: dict[str, Any]) -> float | None:
    exp = claims.get("exp")
    return float(exp) if isinstance(exp, int | float) and exp > 0 else None


def _expires_at(claims: dict[str, Any]) -> float | None:
    """When the connection (or subscription) expires: `expire_at` when the token sets it, else `exp`.

    As Centrifugo: `expire_at` decouples the connection's life from the
    token's own `exp` (which is still checked when the token is verified);
    ``"expire_at": 0`` means the connection never expires."""
    if "expire_at" not in claims:
        return _exp(claims)
    value = claims["expire_at"]
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise TokenInvalid("claim expire_at is not a non-negative number")
    return float(value) if value > 0 else None


def _iat(claims: dict[str, Any]) -> float | None:
    iat = claims.get("iat")
    return float(iat) if isinstance(iat, int | float) else None


def _string(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name, "")
    if not isinstance(value, str):
        raise TokenInvalid(f"claim {name} is not a string")
    return value


@dataclass(frozen=True, slots=True)
class ConnectionClaims:
    user: str
    expires_at: float | None
    info: bytes = b""
    # Server-side subscriptions: channel -> channel info for presence.
    channels: dict[str, bytes] = field(default_factory=dict)
    jti: str = ""
    issued_at: float | None = None
    # Per channel of `subs`, the data its entry gives the client (in the connect result's subs).
    subs_data: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def parse(cls, claims: dict[str, Any]) -> ConnectionClaims:
        if "channel" in claims:
            # Only subscription tokens carry `channel`: one is never a connection token.
            raise TokenInvalid("a subscription token is not a connection token")
        channels: dict[str, bytes] = {}
        listed = claims.get("channels", [])
        if not isinstance(listed, list) or not all(isinstance(c, str) for c in listed):
            raise TokenInvalid("claim channels is not a list of strings")
        channels.update((c, b"") for c in listed)
        subs = claims.get("subs", {})
        if not isinstance(subs, dict):
            raise TokenInvalid("claim subs is not an object")
        subs_data: dict[str, bytes] = {}
        for channel, options in subs.items():
            info = options.get("info") if isinstance(options, dict) else None
            channels[channel] = _info(info)
            data = _subs_data(options)
            if data:
                subs_data[channel] = data
        return cls(
            user=_string(claims, "sub"),
            expires_at=_expires_at(claims),
            info=_info(claims.get("info")),
            channels=channels,
            jti=_string(claims, "jti"),
            issued_at=_iat(claims),
            subs_data=subs_data,
        )


@dataclass(frozen=True, slots=True)
class SubscriptionClaims:
    user: str
    channel: str
    expires_at: float | None
    info: bytes = b""
    jti: str = ""
    issued_at: float | None = None

    @classmethod
    def parse(cls, claims: dict[str, Any]) -> SubscriptionClaims:
        channel = _string(claims, "channel")
        if not channel:
            # A connection token has no `channel`: one is never a subscription token.
            raise TokenInvalid("a subscription token names its channel")
        return cls(
            user=_string(claims, "sub"),
            channel=channel,
            expires_at=_expires_at(claims),
            info=_info(claims.get("info")),
            jti=_string(claims, "jti"),
            issued_at=_iat(claims),
        )
