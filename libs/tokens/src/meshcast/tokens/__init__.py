"""JWT tokens of the client protocol: verification with pinned algorithms, claims."""

from __future__ import annotations

from .claims import ConnectionClaims, SubscriptionClaims
from .jwks import JwksSource
from .keys import KeyError_, VerificationKey, hmac_key, keys_from_jwks, public_key
from .verifier import TokenError, TokenExpired, TokenInvalid, Verifier

__all__ = [
    "ConnectionClaims",
    "JwksSource",
    "KeyError_",
    "SubscriptionClaims",
    "TokenError",
    "TokenExpired",
    "TokenInvalid",
    "VerificationKey",
    "Verifier",
    "hmac_key",
    "keys_from_jwks",
    "public_key",
]
