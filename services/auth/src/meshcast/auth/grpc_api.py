"""The gRPC shell: `AuthService` behind ``meshcast.auth.v1.AuthService``.

One funnel for every call maps failures to status codes (INVALID_ARGUMENT
with the reason, UNAVAILABLE, INTERNAL with no detail: never a stack trace)
and counts each call by method and code.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import structlog
from google.protobuf.message import Message

from meshcast.proto import auth_pb2_grpc
from meshcast.proto.auth_pb2 import (
    DisconnectUserRequest,
    DisconnectUserResponse,
    IssueConnectionTokenRequest,
    IssueConnectionTokenResponse,
    IssueSubscriptionTokenRequest,
    IssueSubscriptionTokenResponse,
    KeysRequest,
    KeysResponse,
    RevokeTokenRequest,
    RevokeTokenResponse,
    RevokeUserRequest,
    RevokeUserResponse,
)

from . import metrics
from .errors import InvalidArgument, Unavailable
from .service import AuthService

log = structlog.get_logger(__name__)

R = TypeVar("R", bound=Message)
Context = Any  # grpc.aio.ServicerContext (grpcio ships no type information)


async def _sync(value: R) -> R:
    return value


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, service: AuthService) -> None:
        self._service = service

    async def _call(self, method: str, context: Context, call: Callable[[], Awaitable[R]], empty: type[R]) -> R:
        started = time.perf_counter()
        code, details = grpc.StatusCode.OK, ""
        try:
            return await call()
        except InvalidArgument as exc:
            code, details = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        except Unavailable as exc:
            log.warning("nats unavailable", method=method, error=str(exc))
            code, details = grpc.StatusCode.UNAVAILABLE, "NATS unavailable, retry later"
        except Exception as exc:
            # The type and message only: a traceback could quote locals (keys, tokens).
            log.error("rpc failed", method=method, error_type=type(exc).__name__)
            code, details = grpc.StatusCode.INTERNAL, "internal error"
        finally:
            metrics.REQUESTS.labels(method, code.name).inc()
            metrics.LATENCY.labels(method).observe(time.perf_counter() - started)
        context.set_code(code)
        context.set_details(details)
        return empty()

    async def IssueConnectionToken(
        self, request: IssueConnectionTokenRequest, context: Context
    ) -> IssueConnectionTokenResponse:
        return await self._call(
            "IssueConnectionToken",
            context,
            lambda: _sync(self._service.issue_connection_token(request)),
            IssueConnectionTokenResponse,
        )

    async def IssueSubscriptionToken(
        self, request: IssueSubscriptionTokenRequest, context: Context
    ) -> IssueSubscriptionTokenResponse:
        return await self._call(
            "IssueSubscriptionToken",
            context,
            lambda: _sync(self._service.issue_subscription_token(request)),
            IssueSubscriptionTokenResponse,
        )

    async def RevokeToken(self, request: RevokeTokenRequest, context: Context) -> RevokeTokenResponse:
        return await self._call(
            "RevokeToken", context, lambda: self._service.revoke_token(request), RevokeTokenResponse
        )

    async def RevokeUser(self, request: RevokeUserRequest, context: Context) -> RevokeUserResponse:
        return await self._call("RevokeUser", context, lambda: self._service.revoke_user(request), RevokeUserResponse)

    async def DisconnectUser(self, request: DisconnectUserRequest, context: Context) -> DisconnectUserResponse:
        return await self._call(
            "DisconnectUser", context, lambda: self._service.disconnect_user(request), DisconnectUserResponse
        )

    async def Keys(self, request: KeysRequest, context: Context) -> KeysResponse:
        return await self._call("Keys", context, lambda: _sync(self._service.keys()), KeysResponse)
