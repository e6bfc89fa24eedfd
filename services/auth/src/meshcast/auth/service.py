"""What each RPC does, in protobuf messages in and out, without gRPC.

Issuing is local (a signature); revoking writes the revocation KV bucket
first (so gateways refuse the token from then on) and then tells every
gateway to close the connections already open with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import structlog

from meshcast.proto.auth_pb2 import (
    DisconnectUserRequest,
    DisconnectUserResponse,
    IssueConnectionTokenRequest,
    IssueConnectionTokenResponse,
    IssueSubscriptionTokenRequest,
    IssueSubscriptionTokenResponse,
    KeysResponse,
    RevokeTokenRequest,
    RevokeTokenResponse,
    RevokeUserRequest,
    RevokeUserResponse,
)
from meshcast.proto.bus_pb2 import Control, DisconnectUser, RevokeToken
from meshcast.protocol import DisconnectCode
from meshcast.tokens import issue_connection_token, issue_subscription_token

from . import metrics, validation
from .keys import Keyring
from .settings import AuthSettings

log = structlog.get_logger(__name__)

REVOKED_REASON = "token revoked"
FORCE_DISCONNECT_REASON = "force disconnect"


class Revocations(Protocol):
    """Where revocations go (NATS in production: `NatsRevocations`)."""

    @property
    def ttl(self) -> int: ...

    async def revoke_jti(self, jti: str, at: int) -> None: ...

    async def revoke_user(self, user: str, before: int) -> int: ...

    async def publish_control(self, control: Control) -> None: ...


class AuthService:
    def __init__(
        self,
        settings: AuthSettings,
        keyring: Keyring,
        revocations: Revocations,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._keyring = keyring
        self._revocations = revocations
        self._clock = clock
        self._keys = KeysResponse(jwks_json=keyring.jwks_json.decode())

    def issue_connection_token(self, request: IssueConnectionTokenRequest) -> IssueConnectionTokenResponse:
        s = self._settings
        user = validation.name(request.user, "user")
        ttl = validation.ttl(request.ttl_seconds, s.token_default_ttl, s.token_max_ttl)
        info = validation.info(request.info_json, s.token_max_info_bytes)
        channels = validation.channels(request.channels, s.token_max_channels)
        audience = request.audience if request.HasField("audience") else s.token_audience
        issued = issue_connection_token(
            self._keyring.signing,
            user,
            ttl=ttl,
            now=self._clock(),
            info=info,
            channels=channels,
            audience=audience or None,
            issuer=s.token_issuer or None,
        )
        metrics.ISSUED.labels("connection").inc()
        log.info("connection token issued", user=user, jti=issued.jti, ttl=ttl, channels=len(channels))
        return IssueConnectionTokenResponse(token=issued.token, expires_at=issued.expires_at, jti=issued.jti)

    def issue_subscription_token(self, request: IssueSubscriptionTokenRequest) -> IssueSubscriptionTokenResponse:
        s = self._settings
        user = validation.name(request.user, "user")
        channel = validation.name(request.channel, "channel")
        ttl = validation.ttl(request.ttl_seconds, s.token_default_ttl, s.token_max_ttl)
        info = validation.info(request.info_json, s.token_max_info_bytes)
        issued = issue_subscription_token(
            self._keyring.signing,
            user,
            channel,
            ttl=ttl,
            now=self._clock(),
            info=info,
            audience=s.token_audience or None,
            issuer=s.token_issuer or None,
        )
        metrics.ISSUED.labels("subscription").inc()
        log.info("subscription token issued", user=user, channel=channel, jti=issued.jti, ttl=ttl)
        return IssueSubscriptionTokenResponse(token=issued.token, expires_at=issued.expires_at, jti=issued.jti)

    async def revoke_token(self, request: RevokeTokenRequest) -> RevokeTokenResponse:
        jti = validation.name(request.jti, "jti")
        expires_at = validation.timestamp(request.expires_at, "expires_at") if request.HasField("expires_at") else None
        now = int(self._clock())
        await self._revocations.revoke_jti(jti, now)
        code = int(DisconnectCode.INVALID_TOKEN)
        await self._revocations.publish_control(
            Control(revoke_token=RevokeToken(jti=jti, code=code, reason=REVOKED_REASON))
        )
        revoked_until = now + self._revocations.ttl
        if expires_at is not None and expires_at > revoked_until:
            log.warning("revocation expires before the token", jti=jti, expires_at=expires_at, until=revoked_until)
        log.info("token revoked", jti=jti)
        return RevokeTokenResponse(revoked_until=revoked_until)

    async def revoke_user(self, request: RevokeUserRequest) -> RevokeUserResponse:
        user = validation.name(request.user, "user")
        now = self._clock()
        given = request.issued_before if request.HasField("issued_before") else None
        before = validation.issued_before(given, now)
        in_force = await self._revocations.revoke_user(user, before)
        code = int(DisconnectCode.INVALID_TOKEN)
        await self._revocations.publish_control(
            Control(disconnect=DisconnectUser(user=user, code=code, reason=REVOKED_REASON))
        )
        log.info("user revoked", user=user, issued_before=in_force)
        return RevokeUserResponse(issued_before=in_force, revoked_until=int(now) + self._revocations.ttl)

    async def disconnect_user(self, request: DisconnectUserRequest) -> DisconnectUserResponse:
        user = validation.name(request.user, "user")
        default_code = int(DisconnectCode.FORCE_NO_RECONNECT)
        code = validation.disconnect_code(request.code if request.HasField("code") else None, default_code)
        reason = validation.reason(request.reason if request.HasField("reason") else None, FORCE_DISCONNECT_REASON)
        await self._revocations.publish_control(Control(disconnect=DisconnectUser(user=user, code=code, reason=reason)))
        log.info("user disconnected", user=user, code=code)
        return DisconnectUserResponse()

    def keys(self) -> KeysResponse:
        return self._keys
