"""Plain HTTP on the gateway's port: health, readiness, metrics, handshake checks."""

from __future__ import annotations

import time
from collections.abc import Callable
from http import HTTPStatus

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from meshcast.common.health import alive
from meshcast.common.metrics import render

from . import metrics
from .forwarded import FORWARDED_FOR, TrustedProxies
from .ratelimit import KeyedBuckets
from .settings import GatewaySettings

log = structlog.get_logger(__name__)


def _response(status: HTTPStatus, body: bytes, content_type: str = "text/plain; charset=utf-8") -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return Response(status.value, status.phrase, headers, body)


def client_address(proxies: TrustedProxies, connection: ServerConnection, request: Request) -> str:
    """The client's address: the TCP peer's, or what a trusted proxy says it is (forwarded.py)."""
    peer = connection.remote_address
    address = str(peer[0]) if peer else ""
    if not proxies:
        return address
    return proxies.client_address(address, request.headers.get_all(FORWARDED_FOR))


def make_request_processor(
    settings: GatewaySettings,
    *,
    ready: Callable[[], bool],
    at_capacity: Callable[[], bool],
) -> Callable[[ServerConnection, Request], Response | None]:
    """The `process_request` hook: answers HTTP paths, vets WebSocket handshakes."""
    origins = set(settings.allowed_origins)
    per_ip = KeyedBuckets(settings.ip_connect_rate, settings.ip_connect_burst)
    proxies = TrustedProxies.of(settings.trusted_proxies)

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if path == settings.websocket_path:
            origin = request.headers.get("Origin")
            if origins and "*" not in origins and origin is not None and origin not in origins:
                log.info("origin rejected", origin=origin)
                metrics.HANDSHAKES_REJECTED.labels("origin").inc()
                return _response(HTTPStatus.FORBIDDEN, b"origin not allowed\n")
            ip = client_address(proxies, connection, request)
            if not per_ip.take(ip, time.monotonic()):
                log.info("connection rate limited", ip=ip)
                metrics.HANDSHAKES_REJECTED.labels("rate_limited").inc()
                return _response(HTTPStatus.TOO_MANY_REQUESTS, b"too many connections\n")
            refused = "not_ready" if not ready() else "at_capacity" if at_capacity() else None
            if refused is not None:
                metrics.HANDSHAKES_REJECTED.labels(refused).inc()
                return _response(HTTPStatus.SERVICE_UNAVAILABLE, b"not accepting connections\n")
            return None
        if path == "/health":
            if not alive():  # NATS closed for good: let the liveness probe restart us
                return _response(HTTPStatus.SERVICE_UNAVAILABLE, b"nats connection closed\n")
            return _response(HTTPStatus.OK, b"ok\n")
        if path == "/ready":
            if ready():
                return _response(HTTPStatus.OK, b"ready\n")
            return _response(HTTPStatus.SERVICE_UNAVAILABLE, b"not ready\n")
        if path == "/metrics":
            body, content_type = render()
            return _response(HTTPStatus.OK, body, content_type)
        return _response(HTTPStatus.NOT_FOUND, b"not found\n")

    return process_request
