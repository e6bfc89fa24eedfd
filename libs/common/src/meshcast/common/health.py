"""A minimal HTTP endpoint for services without a web server of their own.

``GET /health`` (alive), ``GET /ready`` (the `ready` callback) and
``GET /metrics`` (Prometheus), plus any extra `routes` a service adds (the
auth service's JWKS); anything else is 404. Enough for Kubernetes probes,
scraping and a few static documents; not a general web server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .metrics import render

_MAX_REQUEST = 8192


@dataclass(frozen=True, slots=True)
class Response:
    """What an extra route answers: status line text, body, content type, extra headers."""

    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    status: str = "200 OK"
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self) -> bytes:
        extra = "".join(f"{name}: {value}\r\n" for name, value in self.headers)
        head = (
            f"HTTP/1.1 {self.status}\r\nContent-Type: {self.content_type}\r\nContent-Length: {len(self.body)}\r\n"
            f"{extra}Connection: close\r\n\r\n"
        )
        return head.encode() + self.body


Route = Callable[[], Response]


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    return Response(body, content_type, status).encode()


class HealthServer:
    def __init__(
        self, host: str, port: int, ready: Callable[[], bool], routes: Mapping[str, Route] | None = None
    ) -> None:
        self._host = host
        self._port = port
        self._ready = ready
        self._routes = dict(routes or {})
        self._server: asyncio.Server | None = None
        self.port = port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def respond(self, path: str) -> bytes:
        if path == "/health":
            return _response("200 OK", b"ok\n")
        if path == "/ready":
            return _response("200 OK", b"ready\n") if self._ready() else _response("503 Service Unavailable", b"no\n")
        if path == "/metrics":
            body, content_type = render()
            return _response("200 OK", body, content_type)
        route = self._routes.get(path)
        if route is not None:
            return route().encode()
        return _response("404 Not Found", b"not found\n")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                line = await reader.readuntil(b"\r\n")
            parts = line.decode("latin-1").split()
            path = parts[1].partition("?")[0] if len(parts) >= 2 else ""
            writer.write(self.respond(path))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
