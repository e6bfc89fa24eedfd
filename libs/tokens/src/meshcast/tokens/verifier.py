"""Verifying a JWT against the configured keys: pinned algorithms, required expiry."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jwt

from .jwks import JwksSource
from .keys import VerificationKey


class TokenError(Exception):
    """Root of token failures. The message is for logs only, never for clients."""


class TokenExpired(TokenError):
    pass


class TokenInvalid(TokenError):
    pass


class Verifier:
    def __init__(
        self,
        keys: Sequence[VerificationKey],
        jwks: JwksSource | None = None,
        *,
        leeway: float = 0.0,
        audience: str | None = None,
        issuer: str | None = None,
        require_exp: bool = True,
    ) -> None:
        self._keys = list(keys)
        self._jwks = jwks
        self._leeway = leeway
        self._audience = audience
        self._issuer = issuer
        self._require = ["exp"] if require_exp else []

    @property
    def configured(self) -> bool:
        return bool(self._keys) or self._jwks is not None

    async def verify(self, token: str, *, require_exp: bool | None = None) -> dict[str, Any]:
        """The token's claims; TokenExpired or TokenInvalid otherwise."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise TokenInvalid(f"malformed token: {exc}") from exc
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise TokenInvalid("unsigned or unknown algorithm")
        candidates = await self._candidates(alg, kid if isinstance(kid, str) else None)
        if not candidates:
            raise TokenInvalid(f"no key for alg={alg} kid={kid}")
        require = self._require if require_exp is None else (["exp"] if require_exp else [])
        for key in candidates:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key.key,
                    algorithms=[alg],
                    leeway=self._leeway,
                    audience=self._audience,
                    issuer=self._issuer,
                    options={"require": require, "verify_aud": self._audience is not None},
                )
            except jwt.ExpiredSignatureError as exc:
                raise TokenExpired("token expired") from exc
            except jwt.InvalidSignatureError:
                continue
            except jwt.InvalidTokenError as exc:
                raise TokenInvalid(str(exc)) from exc
            _check_times(claims)
            return claims
        raise TokenInvalid("signature does not verify")

    async def _candidates(self, alg: str, kid: str | None) -> list[VerificationKey]:
        static = [k for k in self._keys if alg in k.algorithms and (kid is None or k.kid in (None, kid))]
        if static or self._jwks is None:
            return static
        keys = await self._jwks.keys()
        found = [k for k in keys if alg in k.algorithms and (kid is None or k.kid == kid)]
        if not found and kid is not None:
            keys = await self._jwks.keys(unknown_kid=True)
            found = [k for k in keys if alg in k.algorithms and k.kid == kid]
        return found


def _check_times(claims: dict[str, Any]) -> None:
    """exp, nbf and iat are NumericDate (RFC 7519 2): a number, never a string.

    PyJWT accepts ``"exp": "9999999999"`` (it calls int() on it); a claim
    that is not a number must not quietly mean "no expiry"."""
    for name in ("exp", "nbf", "iat"):
        if name in claims:
            value = claims[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TokenInvalid(f"claim {name} is not a number")
