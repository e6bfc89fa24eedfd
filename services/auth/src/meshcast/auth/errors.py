"""Failures of the auth service, each mapped to one gRPC status by the API shell."""

from __future__ import annotations


class AuthError(Exception):
    """Root of the auth service's failures. Messages never contain a token or a key."""


class InvalidArgument(AuthError, ValueError):
    """A request argument is wrong; the message says which and why (INVALID_ARGUMENT)."""


class Unavailable(AuthError, ConnectionError):
    """NATS (or its JetStream) did not answer in time (UNAVAILABLE; the caller may retry)."""
