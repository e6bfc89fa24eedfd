"""API keys: the one check of every service that takes one (the server API over
HTTP and gRPC, the auth service's gRPC API).

A key comes as ``authorization: apikey <key>`` (gRPC metadata or HTTP header)
and is compared in constant time. A service refuses to start without
``MESHCAST_API_KEY`` unless ``MESHCAST_API_INSECURE=true`` says, explicitly,
that anyone who reaches it may use it (`KeyedSettings`; the service logs that).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Self

import grpc
from pydantic import SecretStr, model_validator

from .settings import ServiceSettings

SCHEME = "apikey"


class KeyedSettings(ServiceSettings):
    """Settings of a service that takes an API key."""

    api_key: SecretStr = SecretStr("")
    api_insecure: bool = False

    @model_validator(mode="after")
    def _key_or_insecure(self) -> Self:
        if not self.api_key.get_secret_value() and not self.api_insecure:
            raise ValueError("api_key is required (or set MESHCAST_API_INSECURE=true to run without one)")
        return self


class ApiKey:
    """The configured key ('' when running insecure: every caller is admitted)."""

    def __init__(self, key: str) -> None:
        self._key = key.encode()

    @property
    def required(self) -> bool:
        return bool(self._key)

    def admits(self, presented: str) -> bool:
        return not self._key or hmac.compare_digest(presented.encode(), self._key)


def from_authorization(value: str) -> str:
    """The key of an ``apikey <key>`` authorization value ('' for any other scheme)."""
    scheme, _, key = value.partition(" ")
    return key.strip() if scheme.lower() == SCHEME else ""


def grpc_presented(metadata: Sequence[tuple[str, Any]] | None) -> str:
    """The key in a call's ``authorization`` metadata ('' when none)."""
    for name, value in metadata or ():
        if name == "authorization" and isinstance(value, str):
            return from_authorization(value)
    return ""


async def _refuse(request: Any, context: Any) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong API key (authorization: apikey <key>)")


_REFUSED = grpc.unary_unary_rpc_method_handler(_refuse)


class KeyCheck(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Ends every call without the key UNAUTHENTICATED, before the servicer sees it."""

    def __init__(self, key: ApiKey) -> None:
        self._key = key

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any) -> Any:
        if self._key.admits(grpc_presented(handler_call_details.invocation_metadata)):
            return await continuation(handler_call_details)
        return _REFUSED


def grpc_server(host: str, port: int, key: ApiKey, max_message_bytes: int) -> tuple[Any, int]:
    """A grpc.aio server (not started) checking `key` on every call, bound to
    `host`:`port` (0: any free port); returns it and the bound port, or raises
    OSError naming the address."""
    server = grpc.aio.server(
        interceptors=[KeyCheck(key)],
        options=[("grpc.max_receive_message_length", max_message_bytes), ("grpc.so_reuseport", 0)],
    )
    address = f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpcio raises this when it cannot bind
        raise OSError(f"cannot listen on {address}: {exc}") from exc
    if not bound:
        raise OSError(f"cannot listen on {address}")
    return server, bound
