"""The keys the settings describe: the one that signs, and the JWKS of every public key.

Every failure is a `ConfigError` naming the setting, never showing the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshcast.common.settings import ConfigError
from meshcast.tokens import (
    KeyError_,
    SigningKey,
    hmac_signing_key,
    jwks_document,
    signing_key_from_pem,
    verify_only_jwk,
)

from .settings import AuthSettings, VerifyOnlyKey


@dataclass(frozen=True, slots=True)
class Keyring:
    signing: SigningKey
    jwks: dict[str, Any]

    @property
    def jwks_json(self) -> bytes:
        return json.dumps(self.jwks, separators=(",", ":")).encode()


def read_pem(field: str, value: str) -> str:
    """A PEM given inline, or read from the file it names."""
    if value.lstrip().startswith("-----BEGIN"):
        return value
    try:
        return Path(value).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        raise ConfigError(f"{field}: cannot read {value}: {reason}") from exc


def _signing_key(settings: AuthSettings) -> SigningKey:
    pem = settings.signing_key.get_secret_value()
    secret = settings.token_hmac_secret.get_secret_value()
    kid = settings.signing_key_id or None
    if pem:
        try:
            return signing_key_from_pem(read_pem("signing_key", pem), kid)
        except KeyError_ as exc:
            raise ConfigError(f"signing_key: {exc}") from exc
    if secret:
        try:
            return hmac_signing_key(secret, kid)
        except KeyError_ as exc:
            raise ConfigError(f"token_hmac_secret: {exc}") from exc
    raise ConfigError("signing_key: no key to sign with: set MESHCAST_SIGNING_KEY or MESHCAST_TOKEN_HMAC_SECRET")


def _verify_only(settings: AuthSettings) -> list[dict[str, Any]]:
    jwks = []
    for i, entry in enumerate(settings.verify_only_keys):
        key = entry if isinstance(entry, VerifyOnlyKey) else VerifyOnlyKey(pem=entry)
        field = f"verify_only_keys.{i}"
        try:
            jwks.append(verify_only_jwk(read_pem(field, key.pem), key.kid or None))
        except KeyError_ as exc:
            raise ConfigError(f"{field}: {exc}") from exc
    return jwks


def load_keyring(settings: AuthSettings) -> Keyring:
    signing = _signing_key(settings)
    return Keyring(signing, jwks_document(signing, _verify_only(settings)))
