"""A minimal HTTP endpoint for services without a web server of their own,
and the liveness rule every service shares.

``GET /health`` (alive: see `Liveness`), ``GET /ready`` (the `ready`
callback) and ``GET /metrics`` (Prometheus), plus any extra `routes` a service
adds (the auth service's JWKS); anything else is 404. Enough for Kubernetes
probes, scraping and a few static documents; not a general web server.

Liveness rule: a service is alive until one of its NATS connections is
*closed for good* (nats-py's CLOSED state: the server refused a protocol line,
e.g. ``-ERR 'Maximum Control Line Exceeded'`` or ``'Maximum Payload
Violation'``; nats-py never reconnects from it). A connection that is merely
disconnected or reconnecting is still alive (it reconnects forever), but not
ready. `run_service` (``meshcast.common.service``) watches the same rule and
exits the process non-zero, so a supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from .metrics import render

_MAX_REQUEST = 8192


class NatsConnection(Protocol):
    """What liveness needs of a nats-py client."""

    @property
    def is_closed(self) -> bool: ...

    @property
    def last_error(self) -> Exception | None: ...


class Liveness:
    """The NATS connections a service lives by; dead once one is closed for good.

    A close the service asked for (its graceful stop, after `stopping`) does
    not count.
    """

    def __init__(self) -> None:
        self._connections: list[tuple[str, NatsConnection]] = []
        self._stopping = False

    def watch(self, name: str, nc: NatsConnection) -> None:
        self._connections.append((name, nc))

    def stopping(self) -> None:
        """The service is stopping: from now on its connections close on purpose."""
        self._stopping = True

    def failure(self) -> str | None:
        """Why the service is dead (a connection closed for good), or None while alive."""
        if self._stopping:
            return None
        for name, nc in self._connections:
            if nc.is_closed:
                return f"NATS connection {name!r} closed for good: {nc.last_error or 'no error given'}"
        return None

    def alive(self) -> bool:
        return self.failure() is None

    async def wait_dead(self, poll: float = 0.1) -> str:
        """Return the `failure` once there is one (polled every `poll` seconds:
        ``meshcast.bus.connect`` takes no closed callback, and a poll of two
        attributes is cheap)."""
        while (reason := self.failure()) is None:  # noqa: ASYNC110 - nothing to wait on
            await asyncio.sleep(poll)
        return reason


_active: Liveness | None = None


def current_liveness() -> Liveness | None:
    """The running service's `Liveness` (set by `run_service`), None outside one."""
    return _active


@contextlib.contextmanager
def activated(liveness: Liveness) -> Iterator[Liveness]:
    """Make `liveness` the process's current one for the duration (run_service does)."""
    global _active
    previous, _active = _active, liveness
    try:
        yield liveness
    finally:
        _active = previous


def alive() -> bool:
    """The liveness rule for any /health endpoint: false once NATS is closed for good."""
    liveness = current_liveness()
    return liveness is None or liveness.alive()


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
            return _response("200 OK", b"ok\n") if alive() else _response("503 Service Unavailable", b"dead\n")
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
