"""Revoked tokens at the gateway: the KV bucket it watches, the control message it obeys."""

from __future__ import annotations

import time

import jwt

from meshcast.bus import Subjects, connect
from meshcast.gateway.app import Gateway
from meshcast.proto.bus_pb2 import Control, RevokeToken
from meshcast.testing import wait_until_async
from meshcast.tokens.revocations import BUCKET, jti_key, user_key

from .harness import SECRET, GatewayFactory, connected_client, open_client


def token(user: str, jti: str = "", iat: float | None = None) -> str:
    claims: dict[str, object] = {"sub": user, "exp": int(time.time()) + 600}
    if jti:
        claims["jti"] = jti
    if iat is not None:
        claims["iat"] = int(iat)
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def test_revoked_user_and_jti_are_refused_at_connect(make_gateway: GatewayFactory, nats_url: str) -> None:
    gateway = await make_gateway(revocations_retry_interval=0.1)
    nc = await connect(nats_url, name="auth-test")
    kv = await nc.jetstream().create_key_value(bucket=BUCKET, history=1)
    now = time.time()
    # Tokens of mallory issued before now - 5 are revoked.
    await kv.put(user_key("mallory"), str(now - 5).encode())
    await kv.put(jti_key("stolen"), str(now).encode())
    watch = gateway._revocations
    assert watch is not None
    await wait_until_async(lambda: watch.revocations.revoked("mallory", "", now - 10), 10, "revocations seen")

    old = await open_client(gateway)
    await old.send({"id": 1, "connect": {"token": token("mallory", iat=now - 10)}})
    assert await old.close_code() == 3500
    fresh = await open_client(gateway)
    assert "connect" in await fresh.command("connect", {"token": token("mallory", iat=now)})
    stolen = await open_client(gateway)
    await stolen.send({"id": 1, "connect": {"token": token("alice", jti="stolen")}})
    assert await stolen.close_code() == 3500
    await nc.close()


async def test_revoke_token_control_closes_the_connections_using_it(gateway: Gateway, nats_url: str) -> None:
    victim = await open_client(gateway)
    assert "connect" in await victim.command("connect", {"token": token("alice", jti="t-1")})
    bystander = await connected_client(gateway, "alice")
    nc = await connect(nats_url, name="auth-test")
    await nc.publish(Subjects().control, Control(revoke_token=RevokeToken(jti="t-1")).SerializeToString())
    await nc.flush()
    assert await victim.close_code() == 3500
    assert bystander.ws.close_code is None
    await nc.close()
