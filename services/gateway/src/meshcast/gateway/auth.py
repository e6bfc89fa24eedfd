"""Connection and subscription tokens: the gateway's verifier port and its JWT implementation.

Every failure maps to the client protocol, as Centrifugo maps it: an expired
token is error 109 (the SDK fetches a new token and retries). A connection
token that does not verify closes the connection with 3500 "invalid token";
a subscription token that does not verify (bad signature, not a JWT, another
audience) is error 103 "permission denied" and the connection stays, while
one that verifies but cannot be a subscription token (no `channel`) closes it
with 3500, as a token for another channel or user does (the handlers check
those). The reason is logged, never the token.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog

from meshcast.common.settings import ConfigError
from meshcast.protocol import DisconnectCode, DisconnectError, ErrorCode, ReplyError
from meshcast.tokens import (
    ConnectionClaims,
    JwksSource,
    KeyError_,
    SubscriptionClaims,
    TokenExpired,
    TokenInvalid,
    VerificationKey,
    Verifier,
    hmac_key,
    public_key,
)

from .settings import GatewaySettings

log = structlog.get_logger(__name__)

C = TypeVar("C", ConnectionClaims, SubscriptionClaims)


class TokenVerifier(Protocol):
    async def verify_connect(self, token: str) -> ConnectionClaims: ...

    async def verify_subscribe(self, token: str) -> SubscriptionClaims: ...


class JwtTokenVerifier:
    def __init__(self, verifier: Verifier) -> None:
        self._verifier = verifier

    async def verify_connect(self, token: str) -> ConnectionClaims:
        return await self._verify(token, "connection", ConnectionClaims.parse, require_exp=True)

    async def verify_subscribe(self, token: str) -> SubscriptionClaims:
        return await self._verify(
            token, "subscription", SubscriptionClaims.parse, require_exp=False, unverified=ErrorCode.PERMISSION_DENIED
        )

    async def _verify(
        self,
        token: str,
        kind: str,
        parse: Callable[[dict[str, Any]], C],
        *,
        require_exp: bool,
        unverified: ErrorCode | None = None,
    ) -> C:
        """Claims that verify and parse as `kind`. A token that does not verify is error
        `unverified` when given, else invalid (3500); claims that do not parse are invalid."""
        try:
            claims = await self._verifier.verify(token, require_exp=require_exp)
        except TokenExpired as exc:
            log.info("token expired", kind=kind)
            raise ReplyError.of(ErrorCode.TOKEN_EXPIRED) from exc
        except TokenInvalid as exc:
            log.info("token refused", kind=kind, reason=str(exc))
            if unverified is not None:
                raise ReplyError.of(unverified) from exc
            raise DisconnectError.of(DisconnectCode.INVALID_TOKEN) from exc
        try:
            return parse(claims)
        except TokenInvalid as exc:
            log.info("token refused", kind=kind, reason=str(exc))
            raise DisconnectError.of(DisconnectCode.INVALID_TOKEN) from exc


def _pem(value: str) -> str:
    """A PEM given inline, or read from the file it names."""
    if value.lstrip().startswith("-----BEGIN"):
        return value
    try:
        return Path(value).read_text()
    except OSError as exc:
        raise ConfigError(f"token_public_keys: cannot read {value}: {exc.strerror}") from exc


def build_verifier(settings: GatewaySettings) -> JwtTokenVerifier:
    """The verifier the settings describe; ConfigError names a bad key."""
    keys: list[VerificationKey] = []
    try:
        if settings.token_hmac_secret:
            keys.append(hmac_key(settings.token_hmac_secret))
        keys.extend(public_key(_pem(value)) for value in settings.token_public_keys)
        jwks = (
            JwksSource(settings.token_jwks_url, refresh_interval=settings.token_jwks_refresh_interval)
            if settings.token_jwks_url
            else None
        )
    except KeyError_ as exc:
        raise ConfigError(f"token keys: {exc}") from exc
    return JwtTokenVerifier(
        Verifier(
            keys,
            jwks,
            leeway=settings.token_leeway,
            audience=settings.token_audience or None,
            issuer=settings.token_issuer or None,
        )
    )
