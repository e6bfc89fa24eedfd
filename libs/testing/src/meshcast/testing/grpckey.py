"""gRPC channels that send an API key on every call, as a backend does
(``authorization: apikey <key>``): the auth service's and the server API's."""

from __future__ import annotations

from typing import Any

import grpc

# The key auth_process starts the auth service with, unless told otherwise.
AUTH_API_KEY = "test-auth-api-key-0123456789"


class _WithKey(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, key: str) -> None:
        self._metadata = ("authorization", f"apikey {key}")

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = [*(details.metadata or ()), self._metadata]
        call_details = grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )
        return await continuation(call_details, request)


def keyed_channel(target: str, key: str = AUTH_API_KEY) -> Any:
    """An insecure grpc.aio channel to `target` whose calls carry `key`."""
    return grpc.aio.insecure_channel(target, interceptors=[_WithKey(key)])
