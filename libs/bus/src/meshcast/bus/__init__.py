"""The NATS bus: subjects, the publication envelope, connecting and publishing."""

from __future__ import annotations

from .channels import allowed_users, is_private, name_of, namespace_of
from .client import close, connect, publish, store, subscriptions_applied
from .envelope import SKIP_HISTORY_HEADER, client_info, encode_publication, safe_headers, trace_headers
from .subjects import MAX_TOKEN_LENGTH, Subjects, decode_token, encode_token, fits_token

__all__ = [
    "MAX_TOKEN_LENGTH",
    "SKIP_HISTORY_HEADER",
    "Subjects",
    "allowed_users",
    "client_info",
    "close",
    "connect",
    "decode_token",
    "encode_publication",
    "encode_token",
    "fits_token",
    "is_private",
    "name_of",
    "namespace_of",
    "publish",
    "safe_headers",
    "store",
    "subscriptions_applied",
    "trace_headers",
]
