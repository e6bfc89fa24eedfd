"""JWT tokens of the client protocol: verification with pinned algorithms, claims, issuing."""

from __future__ import annotations

from .claims import ConnectionClaims, SubscriptionClaims
from .issuing import (
    IssuedToken,
    SigningKey,
    hmac_signing_key,
    issue_connection_token,
    issue_subscription_token,
    jwks_document,
    signing_key_from_pem,
    verify_only_jwk,
)
from .jwks import JwksSource
from .keys import KeyError_, VerificationKey, hmac_key, keys_from_jwks, public_key
from .verifier import TokenError, TokenExpired, TokenInvalid, Verifier

__all__ = [
    "ConnectionClaims",
    "IssuedToken",
    "JwksSource",
    "KeyError_",
    "SigningKey",
    "SubscriptionClaims",
    "TokenError",
    "TokenExpired",
    "TokenInvalid",
    "VerificationKey",
    "Verifier",
    "hmac_key",
    "hmac_signing_key",
    "issue_connection_token",
    "issue_subscription_token",
    "jwks_document",
    "keys_from_jwks",
    "public_key",
    "signing_key_from_pem",
    "verify_only_jwk",
]
