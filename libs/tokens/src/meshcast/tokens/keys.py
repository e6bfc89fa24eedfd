"""Verification keys, each pinned to the algorithms of its own kind.

A token's ``alg`` header only selects among the algorithms the configured
key allows: an HMAC secret never verifies an RS256 token and a public key is
never used as an HMAC secret (the classic algorithm-confusion attack), and
``none`` is never accepted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS = {256: frozenset({"ES256"}), 384: frozenset({"ES384"}), 521: frozenset({"ES512"})}
EDDSA_ALGORITHMS = frozenset({"EdDSA"})


class KeyError_(ValueError):
    """A key that cannot be used (unreadable PEM, unknown JWK type)."""


@dataclass(frozen=True, slots=True)
class VerificationKey:
    key: Any
    algorithms: frozenset[str]
    kid: str | None = None


def hmac_key(secret: str | bytes, kid: str | None = None) -> VerificationKey:
    if not secret:
        raise KeyError_("empty HMAC secret")
    return VerificationKey(secret, HMAC_ALGORITHMS, kid)


def public_key(pem: str | bytes, kid: str | None = None) -> VerificationKey:
    """An RSA, ECDSA or EdDSA public key from PEM; its kind fixes the algorithms."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = load_pem_public_key(data)
    except ValueError as exc:
        raise KeyError_(f"not a PEM public key: {exc}") from exc
    return VerificationKey(key, _algorithms_of(key), kid)


def _algorithms_of(key: Any) -> frozenset[str]:
    if isinstance(key, rsa.RSAPublicKey):
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithms = EC_ALGORITHMS.get(key.curve.key_size)
        if algorithms is None:
            raise KeyError_(f"unsupported curve {key.curve.name}")
        return algorithms
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return EDDSA_ALGORITHMS
    raise KeyError_(f"unsupported key type {type(key).__name__}")


def keys_from_jwks(document: dict[str, Any] | str) -> list[VerificationKey]:
    """The signing keys of a JWKS document (keys for other uses are skipped)."""
    doc = json.loads(document) if isinstance(document, str) else document
    keys = []
    for jwk in doc.get("keys", []):
        if jwk.get("use", "sig") != "sig":
            continue
        try:
            parsed = jwt.PyJWK(jwk)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError) as exc:
            raise KeyError_(f"unusable JWK {jwk.get('kid')!r}: {exc}") from exc
        algorithms = HMAC_ALGORITHMS if jwk.get("kty") == "oct" else _algorithms_of(parsed.key)
        if "alg" in jwk:
            algorithms = algorithms & {jwk["alg"]}
        keys.append(VerificationKey(parsed.key, algorithms, jwk.get("kid")))
    return keys
