"""Issuing tokens: signing keys, connection and subscription JWTs, the JWKS of the public keys.

A private key fixes its own algorithm (RSA: RS256; ECDSA: ES256, ES384 or
ES512 by curve; Ed25519/Ed448: EdDSA), so a configuration never pairs a key
with the wrong algorithm. A key's ``kid`` is configured or, by default, its
RFC 7638 thumbprint: the same key gets the same kid in every process and
after every restart, which keeps a rotated-out key (published verify-only)
matching the tokens it signed. HMAC secrets sign (HS256) but are never
published. Time is passed in (``now``): these functions read no clock.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from .keys import KeyError_

# RFC 7518 3.2: an HS256 key must be at least as long as the hash output.
MIN_HMAC_BYTES = 32
MIN_RSA_BITS = 2048
_EC_ALGORITHM = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
# RFC 7638 3.2: the members of each key type a thumbprint hashes.
_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}

JwkDict = dict[str, Any]


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A key that signs tokens: a private key (its public half is publishable) or an HMAC secret."""

    key: Any
    algorithm: str
    kid: str | None = None

    @property
    def public_jwk(self) -> JwkDict | None:
        """The JWK of the public half; None for an HMAC secret (never published)."""
        if self.algorithm.startswith("HS"):
            return None
        return public_jwk(self.key.public_key(), kid=self.kid)


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    jti: str
    issued_at: int
    expires_at: int


def algorithm_of(key: Any) -> str:
    """The one JWS algorithm a private or public key signs or verifies with."""
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyError_(f"RSA key of {key.key_size} bits: at least {MIN_RSA_BITS} required")
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        algorithm = _EC_ALGORITHM.get(key.curve.name)
        if algorithm is None:
            raise KeyError_(f"unsupported curve {key.curve.name} (P-256, P-384 or P-521)")
        return algorithm
    if isinstance(
        key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey | ed448.Ed448PrivateKey | ed448.Ed448PublicKey
    ):
        return "EdDSA"
    raise KeyError_(f"unsupported key type {type(key).__name__} (RSA, EC or Ed25519)")


def signing_key_from_pem(pem: str | bytes, kid: str | None = None, password: bytes | None = None) -> SigningKey:
    """A private key from PEM; its type fixes the algorithm, its thumbprint the default kid."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = load_pem_private_key(data, password=password)
    except (ValueError, TypeError) as exc:
        # The message of cryptography's error never contains key material.
        raise KeyError_(f"not a PEM private key: {exc}") from exc
    algorithm = algorithm_of(key)
    return SigningKey(key, algorithm, kid or thumbprint(public_jwk(key.public_key())))


def hmac_signing_key(secret: str | bytes, kid: str | None = None) -> SigningKey:
    data = secret.encode() if isinstance(secret, str) else secret
    if len(data) < MIN_HMAC_BYTES:
        raise KeyError_(f"HMAC secret of {len(data)} bytes: at least {MIN_HMAC_BYTES} required")
    return SigningKey(data, "HS256", kid or None)


def verify_only_jwk(pem: str | bytes, kid: str | None = None) -> JwkDict:
    """The JWK of a public key to publish without signing with it (a rotated-out key).

    A private key PEM is accepted too: only its public half is published.
    """
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        public: Any = load_pem_public_key(data)
    except ValueError:
        try:
            public = load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError) as exc:
            raise KeyError_(f"not a PEM public key: {exc}") from exc
    jwk = public_jwk(public)
    return {**jwk, "kid": kid or thumbprint(jwk)}


def public_jwk(public: Any, kid: str | None = None) -> JwkDict:
    """A public key as a signing JWK: ``kty`` and key members, ``alg``, ``use``, ``kid``."""
    algorithm = algorithm_of(public)
    jwk: JwkDict
    if algorithm == "RS256":
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif algorithm == "EdDSA":
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    jwk = {k: v for k, v in jwk.items() if k in {"kty", "crv", "n", "e", "x", "y"}}
    jwk.update(alg=algorithm, use="sig")
    if kid:
        jwk["kid"] = kid
    return jwk


def thumbprint(jwk: JwkDict) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public JWK, base64url."""
    members = _THUMBPRINT_MEMBERS[jwk["kty"]]
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def jwks_document(signing: SigningKey | None, verify_only: Sequence[JwkDict] = ()) -> JwkDict:
    """The JWKS of the signing key's public half and the verify-only keys, once per kid."""
    keys: list[JwkDict] = []
    seen: set[str] = set()
    first = [signing.public_jwk] if signing is not None else []
    for jwk in [*first, *verify_only]:
        if jwk is None or jwk.get("kid") in seen:
            continue
        seen.add(jwk.get("kid", ""))
        keys.append(jwk)
    return {"keys": keys}


def new_jti() -> str:
    """A random token id (128 bits)."""
    return secrets.token_urlsafe(16)


def _sign(key: SigningKey, claims: dict[str, Any]) -> str:
    headers = {"kid": key.kid} if key.kid else None
    return jwt.encode(claims, key.key, algorithm=key.algorithm, headers=headers)


def _claims(
    user: str,
    ttl: int,
    now: float,
    info: Any,
    audience: str | None,
    issuer: str | None,
    jti: str | None,
) -> dict[str, Any]:
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    issued_at = int(now)
    claims: dict[str, Any] = {"sub": user, "iat": issued_at, "exp": issued_at + ttl, "jti": jti or new_jti()}
    if info is not None:
        claims["info"] = info
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    return claims


def issue_connection_token(
    key: SigningKey,
    user: str,
    *,
    ttl: int,
    now: float,
    info: Any = None,
    channels: Iterable[str] = (),
    audience: str | None = None,
    issuer: str | None = None,
    jti: str | None = None,
) -> IssuedToken:
    """A connection token (client protocol v2): ``sub``, ``iat``, ``exp``, ``jti``, and
    ``info`` (any JSON value), ``channels`` (server-side subscriptions), ``aud``, ``iss`` when given."""
    claims = _claims(user, ttl, now, info, audience, issuer, jti)
    listed = list(dict.fromkeys(channels))
    if listed:
        claims["channels"] = listed
    return IssuedToken(_sign(key, claims), claims["jti"], claims["iat"], claims["exp"])


def issue_subscription_token(
    key: SigningKey,
    user: str,
    channel: str,
    *,
    ttl: int,
    now: float,
    info: Any = None,
    audience: str | None = None,
    issuer: str | None = None,
    jti: str | None = None,
) -> IssuedToken:
    """A subscription token for one channel of one user (what a ``$`` channel requires)."""
    claims = _claims(user, ttl, now, info, audience, issuer, jti)
    claims["channel"] = channel
    return IssuedToken(_sign(key, claims), claims["jti"], claims["iat"], claims["exp"])
