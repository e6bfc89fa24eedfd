"""Token verification: every algorithm family, every way a token can be wrong."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from meshcast.testing.keys import public_pem
from meshcast.tokens import (
    ConnectionClaims,
    JwksSource,
    SubscriptionClaims,
    TokenExpired,
    TokenInvalid,
    Verifier,
    hmac_key,
    public_key,
)

SECRET = "a-secret-that-is-long-enough-for-hs512-0123456789abcdef0123456789"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEYS = {
    "ES256": ec.generate_private_key(ec.SECP256R1()),
    "ES384": ec.generate_private_key(ec.SECP384R1()),
    "ES512": ec.generate_private_key(ec.SECP521R1()),
}
ED_KEY = ed25519.Ed25519PrivateKey.generate()


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "exp": int(time.time()) + 60, **extra}


def verifier(**options: Any) -> Verifier:
    keys = [hmac_key(SECRET), public_key(public_pem(RSA_KEY)), public_key(public_pem(ED_KEY))]
    keys += [public_key(public_pem(k)) for k in EC_KEYS.values()]
    return Verifier(keys, **options)


SIGNERS: list[tuple[str, Any]] = [
    ("HS256", SECRET),
    ("HS384", SECRET),
    ("HS512", SECRET),
    ("RS256", RSA_KEY),
    ("RS384", RSA_KEY),
    ("RS512", RSA_KEY),
    ("PS256", RSA_KEY),
    ("PS384", RSA_KEY),
    ("PS512", RSA_KEY),
    ("EdDSA", ED_KEY),
    *EC_KEYS.items(),
]


@pytest.mark.parametrize(("alg", "key"), SIGNERS, ids=[s[0] for s in SIGNERS])
async def test_every_supported_algorithm_verifies(alg: str, key: Any) -> None:
    token = jwt.encode(claims(info={"n": 1}), key, algorithm=alg)
    got = await verifier().verify(token)
    assert got["sub"] == "alice"


async def test_alg_none_is_refused() -> None:
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(json.dumps(claims()).encode()).rstrip(b"=").decode()
    with pytest.raises(TokenInvalid):
        await verifier().verify(f"{header}.{body}.")


async def test_public_key_used_as_hmac_secret_is_refused() -> None:
    """Algorithm confusion: an attacker signs HS256 with the (public) RSA key."""
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps(claims()).encode()).rstrip(b"=")
    signing_input = header + b"." + body
    signature = hmac.new(public_pem(RSA_KEY), signing_input, hashlib.sha256).digest()
    forged = (signing_input + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()
    only_public = Verifier([public_key(public_pem(RSA_KEY))])
    with pytest.raises(TokenInvalid):
        await only_public.verify(forged)


async def test_wrong_key_is_refused() -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(TokenInvalid):
        await verifier().verify(jwt.encode(claims(), other, algorithm="RS256"))
    with pytest.raises(TokenInvalid):
        await verifier().verify(
            jwt.encode(claims(), "another-secret-that-is-long-enough-0123456789", algorithm="HS256")
        )


async def test_expiry_is_required_and_checked_with_leeway() -> None:
    with pytest.raises(TokenExpired):
        await verifier().verify(jwt.encode(claims(exp=int(time.time()) - 10), SECRET, algorithm="HS256"))
    assert await verifier(leeway=30).verify(jwt.encode(claims(exp=int(time.time()) - 10), SECRET, algorithm="HS256"))
    with pytest.raises(TokenInvalid):
        await verifier().verify(jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"))


async def test_not_yet_valid_is_refused() -> None:
    with pytest.raises(TokenInvalid):
        await verifier().verify(jwt.encode(claims(nbf=int(time.time()) + 600), SECRET, algorithm="HS256"))


async def test_audience_and_issuer_are_checked_when_configured() -> None:
    strict = verifier(audience="meshcast", issuer="https://issuer.example")
    good = jwt.encode(claims(aud="meshcast", iss="https://issuer.example"), SECRET, algorithm="HS256")
    assert await strict.verify(good)
    for wrong in ({"aud": "other", "iss": "https://issuer.example"}, {"aud": "meshcast", "iss": "https://evil"}):
        with pytest.raises(TokenInvalid):
            await strict.verify(jwt.encode(claims(**wrong), SECRET, algorithm="HS256"))
    # Not configured: a token's aud is not held against it.
    assert await verifier().verify(jwt.encode(claims(aud="anything"), SECRET, algorithm="HS256"))


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "e30.e30.", "....", "\x00\x01"])
async def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(TokenInvalid):
        await verifier().verify(token)


async def test_unknown_kid_is_refused() -> None:
    keyed = Verifier([hmac_key(SECRET, kid="k1")])
    assert await keyed.verify(jwt.encode(claims(), SECRET, algorithm="HS256", headers={"kid": "k1"}))
    with pytest.raises(TokenInvalid):
        await keyed.verify(jwt.encode(claims(), SECRET, algorithm="HS256", headers={"kid": "k2"}))


class _JwksHandler(BaseHTTPRequestHandler):
    document: dict[str, Any] = {"keys": []}
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        body = json.dumps(self.document).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def jwk_of(private: Any, kid: str, alg: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(private.public_key()))
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


@pytest.fixture
def jwks_server() -> Iterator[tuple[str, type[_JwksHandler]]]:
    handler = type("Handler", (_JwksHandler,), {"document": {"keys": []}, "hits": 0})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json", handler
    server.shutdown()
    server.server_close()
    thread.join(5)


async def test_jwks_keys_rotate_by_kid(jwks_server: tuple[str, type[_JwksHandler]]) -> None:
    url, handler = jwks_server
    first = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    second = ec.generate_private_key(ec.SECP256R1())
    handler.document = {"keys": [jwk_of(first, "2026-1", "RS256")]}
    source = JwksSource(url, min_refresh_interval=0)
    jwks_verifier = Verifier([], source)
    assert await jwks_verifier.verify(jwt.encode(claims(), first, algorithm="RS256", headers={"kid": "2026-1"}))
    # Rotation: a token with a new kid makes the verifier fetch the set again.
    handler.document = {"keys": [jwk_of(first, "2026-1", "RS256"), jwk_of(second, "2026-2", "ES256")]}
    assert await jwks_verifier.verify(jwt.encode(claims(), second, algorithm="ES256", headers={"kid": "2026-2"}))
    with pytest.raises(TokenInvalid):
        await jwks_verifier.verify(jwt.encode(claims(), second, algorithm="ES256", headers={"kid": "nope"}))
    # A JWK pinned to RS256 does not verify PS256 with the same key.
    with pytest.raises(TokenInvalid):
        await jwks_verifier.verify(jwt.encode(claims(), first, algorithm="PS256", headers={"kid": "2026-1"}))


def test_connection_claims() -> None:
    parsed = ConnectionClaims.parse(
        {"sub": "u", "exp": 10, "info": {"a": 1}, "channels": ["x"], "subs": {"y": {"info": {"b": 2}}}, "jti": "j"}
    )
    assert parsed.user == "u"
    assert parsed.info == b'{"a":1}'
    assert parsed.channels == {"x": b"", "y": b'{"b":2}'}
    assert parsed.jti == "j"
    assert parsed.subs_data == {}
    with pytest.raises(TokenInvalid):
        ConnectionClaims.parse({"sub": 5})
    with pytest.raises(TokenInvalid):
        ConnectionClaims.parse({"sub": "u", "channels": "x"})
    sub = SubscriptionClaims.parse({"sub": "u", "channel": "$c:1", "info": "i"})
    assert (sub.user, sub.channel, sub.expires_at, sub.info) == ("u", "$c:1", None, b'"i"')


@pytest.mark.parametrize("parse", [ConnectionClaims.parse, SubscriptionClaims.parse])
def test_expire_at_sets_when_the_connection_expires_apart_from_exp(parse: Any) -> None:
    """As Centrifugo: ``expire_at`` when set, 0 for never; `exp` otherwise (still checked on verify)."""
    base = {"sub": "u", "channel": "$c"} if parse == SubscriptionClaims.parse else {"sub": "u"}
    assert parse({**base, "exp": 100}).expires_at == 100
    assert parse({**base, "exp": 100, "expire_at": 250}).expires_at == 250
    assert parse({**base, "exp": 100, "expire_at": 0}).expires_at is None
    for bad in ("250", -1, True, None):
        with pytest.raises(TokenInvalid):
            parse({**base, "exp": 100, "expire_at": bad})


def test_revocations_are_forgotten_when_the_bucket_has_expired_them() -> None:
    from meshcast.tokens.revocations import Revocations, jti_key, user_key

    revocations = Revocations()
    revocations.apply(jti_key("old"), b"100")
    revocations.apply(jti_key("new"), b"900")
    revocations.apply(user_key("u"), b"150")
    assert revocations.revoked("x", "old", None)
    assert revocations.revoked("u", "", 120)
    assert not revocations.revoked("u", "", 160)
    assert revocations.forget_older_than(200) == 2
    assert not revocations.revoked("x", "old", None)
    assert revocations.revoked("x", "new", None)
    assert len(revocations) == 1
    revocations.apply(jti_key("new"), None)
    assert len(revocations) == 0


def test_the_data_of_a_subs_entry_is_kept_raw_json_or_from_b64data() -> None:
    parsed = ConnectionClaims.parse(
        {"sub": "u", "subs": {"a": {"data": {"welcome": True}}, "b": {"b64data": "AAE="}, "c": {"info": 1}}}
    )
    assert parsed.subs_data == {"a": b'{"welcome":true}', "b": b"\x00\x01"}
    with pytest.raises(TokenInvalid):
        ConnectionClaims.parse({"sub": "u", "subs": {"a": {"b64data": "not base64!"}}})


def test_a_subscription_token_is_never_a_connection_token_and_back() -> None:
    with pytest.raises(TokenInvalid):
        ConnectionClaims.parse({"sub": "alice", "exp": 2_000_000_000, "channel": "$chat:x"})
    with pytest.raises(TokenInvalid):
        SubscriptionClaims.parse({"sub": "alice", "exp": 2_000_000_000})
    claims = SubscriptionClaims.parse({"sub": "alice", "channel": "$chat:x", "jti": "j1", "iat": 5})
    assert (claims.jti, claims.issued_at) == ("j1", 5.0)
