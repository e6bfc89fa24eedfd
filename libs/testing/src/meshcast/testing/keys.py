"""PEM encodings of test keys (cryptography's private keys), in one place."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import serialization


def private_pem(key: Any, password: bytes | None = None) -> bytes:
    """`key` as PKCS#8 PEM, encrypted when a `password` is given."""
    encryption: Any = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    data: bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    return data


def public_pem(key: Any) -> bytes:
    """The public half of private `key` as SubjectPublicKeyInfo PEM."""
    data: bytes = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data
