"""Signing keys: the algorithm each key type gets, kids, the JWKS, and the auth service's key settings."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from jwt.algorithms import RSAAlgorithm

from meshcast.auth.app import AuthApp
from meshcast.auth.keys import load_keyring
from meshcast.auth.settings import AuthSettings
from meshcast.common.settings import ConfigError
from meshcast.testing.keys import private_pem, public_pem
from meshcast.tokens import (
    KeyError_,
    Verifier,
    hmac_key,
    hmac_signing_key,
    issue_connection_token,
    issue_subscription_token,
    jwks_document,
    keys_from_jwks,
    signing_key_from_pem,
    verify_only_jwk,
)
from meshcast.tokens.issuing import thumbprint

SECRET = "an-hmac-secret-of-at-least-32-bytes-0123456789"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_P256 = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
ROOT = Path(__file__).resolve().parents[2]


KEY_TYPES: list[tuple[str, Any, str]] = [
    ("rsa-2048", RSA_KEY, "RS256"),
    ("p-256", EC_P256, "ES256"),
    ("p-384", ec.generate_private_key(ec.SECP384R1()), "ES384"),
    ("p-521", ec.generate_private_key(ec.SECP521R1()), "ES512"),
    ("ed25519", ED_KEY, "EdDSA"),
    ("ed448", ed448.Ed448PrivateKey.generate(), "EdDSA"),
]


@pytest.mark.parametrize(("key", "alg"), [(k, a) for _, k, a in KEY_TYPES], ids=[i for i, _, _ in KEY_TYPES])
async def test_each_key_type_signs_with_its_one_algorithm_and_publishes_its_public_half(key: Any, alg: str) -> None:
    signing = signing_key_from_pem(private_pem(key))
    assert signing.algorithm == alg
    jwk = signing.public_jwk
    assert jwk is not None
    assert (jwk["alg"], jwk["use"], jwk["kid"]) == (alg, "sig", signing.kid)
    assert "d" not in jwk
    issued = issue_connection_token(signing, "alice", ttl=60, now=time.time())
    assert jwt.get_unverified_header(issued.token) == {"alg": alg, "kid": signing.kid, "typ": "JWT"}
    claims = await Verifier(keys_from_jwks(jwks_document(signing))).verify(issued.token)
    assert claims["sub"] == "alice"


@pytest.mark.parametrize(
    ("pem", "message"),
    [
        (private_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)), "at least 2048"),
        (private_pem(ec.generate_private_key(ec.SECP256K1())), "unsupported curve secp256k1"),
        (private_pem(dsa.generate_private_key(2048)), "unsupported key type"),
        (b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n", "not a PEM private key"),
        (public_pem(RSA_KEY), "not a PEM private key"),
        (private_pem(EC_P256, password=b"pw"), "not a PEM private key"),
    ],
    ids=["rsa-1024", "secp256k1", "dsa", "garbage", "public-key", "encrypted"],
)
def test_unusable_private_keys_are_refused(pem: bytes, message: str) -> None:
    with pytest.raises(KeyError_, match=message):
        signing_key_from_pem(pem)


def test_kid_is_the_rfc7638_thumbprint_unless_configured() -> None:
    # RFC 7638 section 3.1: this key's thumbprint.
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3o"
        "knjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHz"
        "u6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8a"
        "wapJzKnqDKgw"
    )
    assert (
        thumbprint({"kty": "RSA", "e": "AQAB", "n": n, "alg": "RS256"}) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    )
    public = RSAAlgorithm.from_jwk({"kty": "RSA", "e": "AQAB", "n": n})
    assert isinstance(public, rsa.RSAPublicKey)
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    published = verify_only_jwk(pem)
    assert published["kid"] == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    # The same key gives the same kid in every process; a configured kid wins.
    assert signing_key_from_pem(private_pem(ED_KEY)).kid == signing_key_from_pem(private_pem(ED_KEY)).kid
    assert signing_key_from_pem(private_pem(ED_KEY), kid="k1").kid == "k1"


def test_a_rotated_out_key_publishes_the_kid_it_signed_with() -> None:
    old = signing_key_from_pem(private_pem(RSA_KEY))
    assert verify_only_jwk(public_pem(RSA_KEY)) == old.public_jwk
    # A private PEM is accepted as verify-only: only its public half is published.
    assert verify_only_jwk(private_pem(RSA_KEY)) == old.public_jwk


def test_jwks_document_lists_each_kid_once_and_never_an_hmac_secret() -> None:
    signing = signing_key_from_pem(private_pem(EC_P256))
    again = verify_only_jwk(public_pem(EC_P256))
    other = verify_only_jwk(public_pem(ED_KEY), kid="old")
    document = jwks_document(signing, [again, other])
    assert [k["kid"] for k in document["keys"]] == [signing.kid, "old"]
    hmac = hmac_signing_key(SECRET)
    assert hmac.public_jwk is None
    assert jwks_document(hmac, [other]) == {"keys": [other]}
    assert SECRET not in json.dumps(jwks_document(hmac))


def test_short_hmac_secrets_are_refused() -> None:
    with pytest.raises(KeyError_, match="at least 32"):
        hmac_signing_key("too-short")
    assert hmac_signing_key(SECRET).algorithm == "HS256"


def test_connection_token_claims_are_exactly_the_ones_asked_for() -> None:
    key = hmac_signing_key(SECRET)
    issued = issue_connection_token(
        key,
        "alice",
        ttl=60,
        now=1_000.9,
        info={"a": 1},
        channels=["x", "y", "x"],
        audience="aud",
        issuer="iss",
        jti="j1",
    )
    claims = jwt.decode(issued.token, options={"verify_signature": False})
    assert claims == {
        "sub": "alice",
        "iat": 1000,
        "exp": 1060,
        "jti": "j1",
        "info": {"a": 1},
        "channels": ["x", "y"],
        "aud": "aud",
        "iss": "iss",
    }
    assert (issued.jti, issued.issued_at, issued.expires_at) == ("j1", 1000, 1060)
    bare = jwt.decode(issue_connection_token(key, "bob", ttl=5, now=0).token, options={"verify_signature": False})
    assert set(bare) == {"sub", "iat", "exp", "jti"}
    assert len(bare["jti"]) >= 20
    with pytest.raises(ValueError, match="ttl"):
        issue_connection_token(key, "bob", ttl=0, now=0)


def test_subscription_token_names_its_channel() -> None:
    issued = issue_subscription_token(hmac_signing_key(SECRET), "alice", "$room", ttl=30, now=50, info=[1])
    claims = jwt.decode(issued.token, options={"verify_signature": False})
    assert (claims["sub"], claims["channel"], claims["info"], claims["exp"]) == ("alice", "$room", [1], 80)


# The auth service's key settings.


def settings(**values: Any) -> AuthSettings:
    return AuthSettings(**{"api_key": "unit-test-key", **values})


def test_the_private_key_signs_when_an_hmac_secret_is_also_set() -> None:
    keyring = load_keyring(settings(signing_key=private_pem(ED_KEY).decode(), token_hmac_secret=SECRET))
    assert keyring.signing.algorithm == "EdDSA"
    assert [k["alg"] for k in keyring.jwks["keys"]] == ["EdDSA"]


async def test_hmac_only_keyring_publishes_nothing_and_verifies_with_the_secret() -> None:
    keyring = load_keyring(settings(token_hmac_secret=SECRET, signing_key_id="h1"))
    assert keyring.jwks == {"keys": []}
    token = issue_connection_token(keyring.signing, "a", ttl=60, now=time.time()).token
    assert jwt.get_unverified_header(token)["kid"] == "h1"
    assert (await Verifier([hmac_key(SECRET)]).verify(token))["sub"] == "a"


def test_keys_are_read_from_files(tmp_path: Path) -> None:
    key_file, old_file = tmp_path / "signing.pem", tmp_path / "old.pem"
    key_file.write_bytes(private_pem(EC_P256))
    old_file.write_bytes(public_pem(RSA_KEY))
    keyring = load_keyring(settings(signing_key=str(key_file), verify_only_keys=[str(old_file)]))
    assert [k["alg"] for k in keyring.jwks["keys"]] == ["ES256", "RS256"]


def test_verify_only_keys_with_kids_come_from_json_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    entries = [public_pem(RSA_KEY).decode(), {"pem": public_pem(ED_KEY).decode(), "kid": "2024-01"}]
    monkeypatch.setenv("MESHCAST_VERIFY_ONLY_KEYS", json.dumps(entries))
    monkeypatch.setenv("MESHCAST_TOKEN_HMAC_SECRET", SECRET)
    monkeypatch.setenv("MESHCAST_API_KEY", "unit-test-key")
    keyring = load_keyring(AuthSettings.load())
    assert [(k["alg"], k["kid"]) for k in keyring.jwks["keys"]][1] == ("EdDSA", "2024-01")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "signing_key: no key to sign with"),
        ({"signing_key": "/nonexistent/key.pem"}, "signing_key: cannot read /nonexistent/key.pem"),
        ({"signing_key": "-----BEGIN PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----"}, "signing_key: not a PEM"),
        ({"token_hmac_secret": "short"}, "token_hmac_secret: HMAC secret of 5 bytes"),
        ({"token_hmac_secret": SECRET, "verify_only_keys": ["/nonexistent"]}, "verify_only_keys.0: cannot read"),
        ({"token_hmac_secret": SECRET, "verify_only_keys": ["-----BEGIN nonsense"]}, "verify_only_keys.0: not a PEM"),
    ],
    ids=["none", "unreadable", "bad-pem", "short-secret", "unreadable-verify-only", "bad-verify-only"],
)
def test_bad_keys_stop_the_start_with_the_setting_named(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as failure:
        AuthApp(settings(**values))
    assert "PRIVATE KEY" not in str(failure.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"token_default_ttl": 7200, "token_max_ttl": 3600}, "token_default_ttl exceeds token_max_ttl"),
        ({"token_max_ttl": 200_000}, "token_max_ttl exceeds revocation_ttl"),
        ({"grpc_port": 70000}, "grpc_port"),
        ({"api_key": ""}, "api_key is required"),
    ],
)
def test_inconsistent_settings_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AuthSettings.load(**{"api_key": "unit-test-key", **values})


def test_the_entry_point_exits_2_naming_the_unreadable_key(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "MESHCAST_SIGNING_KEY": str(tmp_path / "missing.pem"), "MESHCAST_API_KEY": "k"}
    result = subprocess.run(
        [sys.executable, "-m", "meshcast.auth"], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2, result.stderr
    assert "signing_key: cannot read" in result.stderr
    assert "Traceback" not in result.stderr
