"""Tokens at the gateway: public-key connection tokens, subscription tokens, expiry, server-side subscriptions."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from meshcast.gateway.app import Gateway
from meshcast.testing import token_ttl
from meshcast.testing.keys import public_pem
from meshcast.testing.tokens import connection_jwt, subscription_jwt
from meshcast.tokens import SubscriptionClaims

from .harness import SECRET, GatewayFactory, connected_client, open_client

EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()

NAMESPACES = """
namespaces:
  - name: chat
    allow_publish: true
  - name: vip
    allow_subscribe: false
default:
  allow_publish: true
"""


def pem(private: Any) -> str:
    return public_pem(private).decode()


def sub_token(user: str, channel: str, ttl: float = 3600, key: Any = SECRET, alg: str = "HS256", **extra: Any) -> str:
    return subscription_jwt(key, user, channel, ttl=ttl, alg=alg, **extra)


def conn_token(user: str, ttl: float = 3600, key: Any = SECRET, alg: str = "HS256", **extra: Any) -> str:
    return connection_jwt(key, user, ttl=ttl, alg=alg, **extra)


@pytest.fixture
async def gateway(make_gateway: GatewayFactory, tmp_path: Any) -> Gateway:
    ec_file = tmp_path / "ec.pem"
    ec_file.write_text(pem(EC_KEY))
    return await make_gateway(
        NAMESPACES, token_public_keys=[str(ec_file), pem(ED_KEY)], token_audience="", token_leeway=0
    )


@pytest.mark.parametrize(("key", "alg"), [(EC_KEY, "ES256"), (ED_KEY, "EdDSA"), (SECRET, "HS512")])
async def test_connection_tokens_of_each_configured_key_connect(gateway: Gateway, key: Any, alg: str) -> None:
    client = await open_client(gateway)
    reply = await client.command("connect", {"token": conn_token("alice", key=key, alg=alg)})
    assert "connect" in reply


async def test_hmac_token_forged_with_the_public_key_closes_with_3500(gateway: Gateway) -> None:
    client = await open_client(gateway)
    # PyJWT refuses PEM-looking HMAC secrets; sign by hand as an attacker would.
    head = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps({"sub": "mallory", "exp": 9999999999}).encode()).rstrip(b"=")
    sig = hmac.new(pem(EC_KEY).encode(), head + b"." + body, hashlib.sha256).digest()
    token = (head + b"." + body + b"." + base64.urlsafe_b64encode(sig).rstrip(b"=")).decode()
    await client.send({"id": 1, "connect": {"token": token}})
    assert await client.close_code() == 3500


@pytest.mark.parametrize(("user", "channel"), [("alice", "$chat:other"), ("bob", "$chat:secret")])
async def test_a_valid_subscription_token_for_another_channel_or_user_closes_with_3500(
    gateway: Gateway, user: str, channel: str
) -> None:
    # As Centrifugo: a token that verifies yet grants something else is an invalid token.
    alice = await connected_client(gateway, "alice")
    await alice.send({"id": 2, "subscribe": {"channel": "$chat:secret", "token": sub_token(user, channel)}})
    assert await alice.close_code() == 3500


async def test_private_channel_needs_a_subscription_token_for_this_user_and_channel(gateway: Gateway) -> None:
    alice = await connected_client(gateway, "alice")
    assert (await alice.command("subscribe", {"channel": "$chat:secret"}))["error"]["code"] == 103
    good = sub_token("alice", "$chat:secret", ttl=600, info={"role": "admin"}, key=ED_KEY, alg="EdDSA")
    result = (await alice.command("subscribe", {"channel": "$chat:secret", "token": good}))["subscribe"]
    assert result["expires"] is True
    assert 590 <= result["ttl"] <= 600
    # Subscribers of a private channel may publish to it (the namespace allows publishing).
    assert "publish" in await alice.command("publish", {"channel": "$chat:secret", "data": {"x": 1}})
    push = (await alice.next_push())["push"]["pub"]
    assert push["info"]["chan_info"] == {"role": "admin"}


async def test_subscription_token_grants_a_channel_the_namespace_closes(gateway: Gateway) -> None:
    alice = await connected_client(gateway, "alice")
    assert (await alice.command("subscribe", {"channel": "vip:lounge"}))["error"]["code"] == 103
    reply = await alice.command("subscribe", {"channel": "vip:lounge", "token": sub_token("alice", "vip:lounge")})
    assert "subscribe" in reply


async def test_expired_subscription_token_is_109_and_one_that_does_not_verify_is_103(gateway: Gateway) -> None:
    # As Centrifugo: a subscription token that does not verify is refused, the connection stays.
    alice = await connected_client(gateway, "alice")
    expired = sub_token("alice", "$chat:x", ttl=-10)
    assert (await alice.command("subscribe", {"channel": "$chat:x", "token": expired}))["error"]["code"] == 109
    forged = sub_token("alice", "$chat:x", key="another-secret-0123456789abcdef-0123456789")
    for bad in ("garbage", forged):
        reply = await alice.command("subscribe", {"channel": "$chat:x", "token": bad})
        assert reply["error"] == {"code": 103, "message": "permission denied"}
    good = sub_token("alice", "$chat:x")
    assert "subscribe" in await alice.command("subscribe", {"channel": "$chat:x", "token": good})


async def test_subscription_expires_unless_refreshed(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(NAMESPACES, ping_interval=30, expiry_grace=0)
    alice = await connected_client(gateway, "alice")
    # Both tokens expire at the same second: once the short one's expiry is told,
    # the kept one would have expired too, had it not been refreshed.
    exp = int(time.time()) + token_ttl(1)
    for channel in ("$chat:short", "$chat:kept"):
        reply = await alice.command("subscribe", {"channel": channel, "token": sub_token("alice", channel, exp=exp)})
        assert "subscribe" in reply, reply
    refreshed = await alice.command("sub_refresh", {"channel": "$chat:kept", "token": sub_token("alice", "$chat:kept")})
    assert refreshed["sub_refresh"]["expires"] is True
    push = (await alice.next_push(seconds=token_ttl(1) + 5))["push"]
    assert push == {"channel": "$chat:short", "unsubscribe": {"code": 2501, "reason": "subscription expired"}}
    assert time.time() >= exp
    assert "publish" in await alice.command("publish", {"channel": "$chat:kept", "data": {"still": True}})
    assert (await alice.command("publish", {"channel": "$chat:short", "data": {}}))["error"]["code"] == 103


async def test_sub_refresh_of_a_channel_not_subscribed_is_103_token_or_not(gateway: Gateway) -> None:
    alice = await connected_client(gateway, "alice")
    assert (await alice.command("sub_refresh", {"channel": "$chat:zz", "token": "x"}))["error"]["code"] == 103
    assert (await alice.command("sub_refresh", {"channel": "$chat:zz"}))["error"]["code"] == 103


@pytest.mark.parametrize("bad", ["garbage", sub_token("alice", "$chat:b"), sub_token("bob", "$chat:a")])
async def test_sub_refresh_with_a_bad_token_or_one_for_another_channel_closes_with_3500(
    gateway: Gateway, bad: str
) -> None:
    # As Centrifugo's sub_refresh handler: any token that is not a valid one for this
    # subscription is an invalid token.
    alice = await connected_client(gateway, "alice")
    await alice.command("subscribe", {"channel": "$chat:a", "token": sub_token("alice", "$chat:a")})
    await alice.send({"id": 9, "sub_refresh": {"channel": "$chat:a", "token": bad}})
    assert await alice.close_code() == 3500


async def test_sub_refresh_with_an_expired_token_is_empty_and_the_old_expiry_stands(
    make_gateway: GatewayFactory,
) -> None:
    # As Centrifugo: {} rather than error 109; the subscription ends when its token said.
    gateway = await make_gateway(NAMESPACES, ping_interval=30, expiry_grace=0)
    alice = await connected_client(gateway, "alice")
    exp = int(time.time()) + token_ttl(1)
    reply = await alice.command("subscribe", {"channel": "$chat:r", "token": sub_token("alice", "$chat:r", exp=exp)})
    assert "subscribe" in reply, reply
    expired = sub_token("alice", "$chat:r", ttl=-5)
    assert (await alice.command("sub_refresh", {"channel": "$chat:r", "token": expired}))["sub_refresh"] == {}
    push = (await alice.next_push(seconds=token_ttl(1) + 5))["push"]
    assert push == {"channel": "$chat:r", "unsubscribe": {"code": 2501, "reason": "subscription expired"}}
    assert time.time() >= exp


async def test_connection_token_channels_are_server_side_subscriptions(gateway: Gateway) -> None:
    client = await open_client(gateway)
    token = conn_token("alice", channels=["chat:news"], subs={"chat:team": {"info": {"team": "a"}}})
    result = (await client.command("connect", {"token": token}))["connect"]
    assert set(result["subs"]) == {"chat:news", "chat:team"}
    bob = await connected_client(gateway, "bob")
    await bob.command("publish", {"channel": "chat:team", "data": {"hello": "team"}})
    push = (await client.next_push())["push"]
    assert push["channel"] == "chat:team"
    assert push["pub"]["data"] == {"hello": "team"}


async def test_the_data_of_a_subs_claim_entry_comes_with_its_subscription(gateway: Gateway) -> None:
    # As Centrifugo: the connect result's subs carry each `subs` entry's data.
    client = await open_client(gateway)
    token = conn_token("alice", channels=["chat:news"], subs={"chat:team": {"data": {"welcome": True}}})
    result = (await client.command("connect", {"token": token}))["connect"]
    assert result["subs"]["chat:team"]["data"] == {"welcome": True}
    assert "data" not in result["subs"]["chat:news"]


def test_subscription_claims_round_trip() -> None:
    token = sub_token("u", "$c", info={"a": 1})
    claims = SubscriptionClaims.parse(jwt.decode(token, SECRET, algorithms=["HS256"]))
    assert claims.channel == "$c"
