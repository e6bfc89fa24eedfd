"""Revoked tokens at the gateway, revoked by the real auth service over gRPC: the
KV bucket the gateway watches, and the control message it obeys."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from meshcast.auth.app import AuthApp
from meshcast.gateway.app import Gateway
from meshcast.proto.auth_pb2 import RevokeTokenRequest, RevokeUserRequest
from meshcast.testing import timeout, wait_until_async, within
from meshcast.testing.tokens import connection_jwt

from .harness import SECRET, AuthService, GatewayFactory, auth_settings, connected_client, open_client


def token(user: str, jti: str = "", iat: float | None = None) -> str:
    claims: dict[str, Any] = {}
    if jti:
        claims["jti"] = jti
    if iat is not None:
        claims["iat"] = int(iat)
    return connection_jwt(SECRET, user, ttl=600, **claims)


@pytest.fixture
async def auth(nats_url: str) -> AsyncIterator[AuthService]:
    app = AuthApp(auth_settings(nats_url, token_hmac_secret=SECRET))
    await within(app.start(), 10)
    service = AuthService(app)
    try:
        yield service
    finally:
        await service.close()


async def test_revoked_user_and_jti_are_refused_at_connect(make_gateway: GatewayFactory, auth: AuthService) -> None:
    gateway = await make_gateway(revocations_retry_interval=0.1)
    now = time.time()
    # Tokens of mallory issued before now - 5 are revoked, and the token "stolen".
    await auth.stub.RevokeUser(RevokeUserRequest(user="mallory", issued_before=int(now - 5)), timeout=timeout(5))
    await auth.stub.RevokeToken(RevokeTokenRequest(jti="stolen"), timeout=timeout(5))
    watch = gateway._revocations
    assert watch is not None
    await wait_until_async(
        lambda: watch.revocations.revoked("mallory", "", now - 10) and watch.revocations.revoked("x", "stolen", now),
        10,
        "revocations seen",
    )

    old = await open_client(gateway)
    await old.send({"id": 1, "connect": {"token": token("mallory", iat=now - 10)}})
    assert await old.close_code() == 3500
    fresh = await open_client(gateway)
    assert "connect" in await fresh.command("connect", {"token": token("mallory", iat=now)})
    stolen = await open_client(gateway)
    await stolen.send({"id": 1, "connect": {"token": token("alice", jti="stolen")}})
    assert await stolen.close_code() == 3500


async def test_a_revoked_token_closes_the_connections_using_it_and_only_those(
    gateway: Gateway, auth: AuthService
) -> None:
    victim = await open_client(gateway)
    assert "connect" in await victim.command("connect", {"token": token("alice", jti="t-1")})
    bystander = await connected_client(gateway, "alice")
    await auth.stub.RevokeToken(RevokeTokenRequest(jti="t-1"), timeout=timeout(5))
    assert await victim.close_code() == 3500
    # The bystander still answers: its connection was not closed.
    assert "subscribe" in await bystander.command("subscribe", {"channel": "chat:after-revocation"})
    assert bystander.ws.close_code is None
