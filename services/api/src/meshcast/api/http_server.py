"""A lean HTTP/1.1 server for the server API's routes: the publish hot path.

Why not aiohttp: profiled under the bench's publish load, aiohttp's own request
machinery cost about 120 µs of CPU per request on this machine, more than the
publish it carried. This server parses with httptools (llhttp, as uvicorn does)
and hands the application one `HttpRequest` with its whole body.

What it does, so that any HTTP/1.1 client works (curl, requests, aiohttp,
undici, Go's net/http):

- keep-alive by default for HTTP/1.1, ``Connection: close`` honoured; HTTP/1.0
  closes unless it asked for keep-alive;
- pipelined requests are answered in order, one at a time per connection; at
  most `HttpLimits.max_pipelined` wait, then the connection stops being read;
- ``Expect: 100-continue`` is answered when the request is next in line
  (curl sends it for bodies over 1 KiB); a pipelined one behind others gets
  none and the client sends its body after its own wait;
- the application screens each request on its head (`HttpApp.screen`) before
  the body is read: a refusal there (405, 401, 404) and a body over
  `max_body` (413) are answered and the connection closed, unread;
- a head over `max_head` is 431 (414 for the URL alone), a malformed request
  400, an Upgrade 400; each closes the connection;
- a request whose head and body do not arrive within `request_timeout` is
  408; an idle keep-alive connection closes after `idle_timeout`;
- past `max_connections` a new connection gets 503 and is closed;
- while the transport's write buffer is over its high-water mark no further
  request is started (the client is not reading its answers).

A handler that raises is a 500 with an empty body and a log line; the
connection stays usable.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, Protocol

import httptools
import structlog

log = structlog.get_logger(__name__)

REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# How long a refused connection is read (and what arrives dropped) before it closes, seconds.
LINGER = 2.0
_NEVER = float("inf")
# How often connections are checked for their timeouts at most, seconds.
SWEEP_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class HttpLimits:
    max_body: int = 1 << 20
    # Request line and headers together.
    max_head: int = 16384
    max_pipelined: int = 32
    max_connections: int = 10000
    request_timeout: float = 30.0
    idle_timeout: float = 75.0


@dataclass(slots=True)
class HttpRequest:
    method: str
    # The path without its query string.
    path: str
    # Header names in lower case; a repeated header keeps its last value.
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = ""
    # Extra header lines, e.g. ``(("Allow", "POST"),)``.
    headers: tuple[tuple[str, str], ...] = ()


class HttpApp(Protocol):
    def screen(self, method: str, path: str, headers: Mapping[str, str]) -> HttpResponse | None:
        """A refusal answered before the body is read, or None to read it."""

    def handle(self, request: HttpRequest) -> Awaitable[HttpResponse]: ...


class _Date:
    """The ``Date`` header value, formatted once a second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode()
        return self._value


_date = _Date()


def _head(response: HttpResponse, close: bool, keep_alive_10: bool) -> bytes:
    status = response.status
    lines = [
        b"HTTP/1.1 %d %s\r\nDate: %s\r\nContent-Length: %d\r\n"
        % (status, REASONS.get(status, "Unknown").encode(), _date(), len(response.body))
    ]
    if response.content_type:
        lines.append(b"Content-Type: %s\r\n" % response.content_type.encode())
    for name, value in response.headers:
        lines.append(b"%s: %s\r\n" % (name.encode(), value.encode()))
    if close:
        lines.append(b"Connection: close\r\n")
    elif keep_alive_10:
        lines.append(b"Connection: keep-alive\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


class _Refuse(Exception):
    """Raised from a parser callback: answer `response` once it is this request's turn, then close."""

    def __init__(self, response: HttpResponse) -> None:
        super().__init__(response.status)
        self.response = response


class _Closed:
    """The parser of a connection that reads nothing more."""

    def feed_data(self, data: bytes) -> None:
        return None


@dataclass(slots=True)
class _Queued:
    request: HttpRequest | None
    # HTTP/1.0 with keep-alive, answered with ``Connection: keep-alive``.
    keep_alive_10: bool
    close: bool
    # Set for a refusal: written as it is, then the connection closes.
    response: HttpResponse | None = None


class _Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._limits = server.limits
        self._loop = asyncio.get_running_loop()
        self._transport: Any = None
        self._parser: Any = httptools.HttpRequestParser(self)
        self._queue: deque[_Queued] = deque()
        self._busy = False
        self._writable = True
        self._reading = True
        self._closed = False
        # The request being parsed.
        self._in_message = False
        self._url = b""
        self._head_size = 0
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = 0
        # When this connection expires (loop time), checked by the server's sweep.
        self._deadline = _NEVER
        self._lingering = False

    # -- transport -----------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        server = self._server
        if len(server.connections) >= self._limits.max_connections:
            transport.write(_head(HttpResponse(503), True, False))
            transport.close()
            self._closed = True
            return
        server.connections.add(self)
        self._arm(self._limits.idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._disarm()
        self._queue.clear()
        self._server.connections.discard(self)

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        self._next()

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            refusal = exc.__context__
            self._refuse(refusal.response if isinstance(refusal, _Refuse) else HttpResponse(400))
        except httptools.HttpParserError:  # malformed, an invalid method or URL, an Upgrade
            self._refuse(HttpResponse(400))

    def _refuse(self, response: HttpResponse) -> None:
        """Answer `response` after what is queued, read nothing more, then close."""
        self._disarm()
        self._pause_reading()
        self._parser = _Closed()
        self._queue.append(_Queued(None, False, True, response))
        self._next()

    def _pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._transport.pause_reading()

    # -- parser callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = True
        self._url = b""
        self._head_size = 0
        self._headers = {}
        self._body = []
        self._body_size = 0
        self._arm(self._limits.request_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > self._limits.max_head:
            raise _Refuse(HttpResponse(414))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self._limits.max_head:
            raise _Refuse(HttpResponse(431))
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        parser = self._parser
        if parser.should_upgrade():
            raise _Refuse(HttpResponse(400))
        method = parser.get_method().decode("latin-1")
        path = self._url.partition(b"?")[0].decode("latin-1")
        refusal = self._server.app.screen(method, path, self._headers)
        if refusal is not None:
            raise _Refuse(refusal)
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self._limits.max_body:
            raise _Refuse(HttpResponse(413))
        if self._headers.get("expect", "").lower() == "100-continue" and not self._busy and not self._queue:
            self._transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._limits.max_body:
            raise _Refuse(HttpResponse(413))
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._disarm()
        parser = self._parser
        keep_alive = parser.should_keep_alive()
        request = HttpRequest(
            parser.get_method().decode("latin-1"),
            self._url.partition(b"?")[0].decode("latin-1"),
            self._headers,
            b"".join(self._body) if len(self._body) != 1 else self._body[0],
        )
        self._body = []
        self._queue.append(_Queued(request, keep_alive and parser.get_http_version() == "1.0", not keep_alive))
        if len(self._queue) >= self._limits.max_pipelined:
            self._pause_reading()
        self._next()

    # -- answering -------------------------------------------------------------------

    def _next(self) -> None:
        if self._busy or not self._queue or not self._writable or self._transport is None:
            return
        item = self._queue.popleft()
        if (
            not self._reading
            and not isinstance(self._parser, _Closed)
            and len(self._queue) < self._limits.max_pipelined
        ):
            self._reading = True
            self._transport.resume_reading()
        if item.response is not None or item.request is None:
            self._answer_refusal(item.response or HttpResponse(400))
            return
        self._busy = True
        self._server.track(self._loop.create_task(self._serve(item)))

    async def _serve(self, item: _Queued) -> None:
        assert item.request is not None
        try:
            response = await self._server.app.handle(item.request)
        except Exception as exc:  # the funnel: a failure is a 500, never a dropped connection
            log.exception("http handler failed", path=item.request.path, error=type(exc).__name__)
            response = HttpResponse(500)
        self._busy = False
        self._write(response, close=item.close, keep_alive_10=item.keep_alive_10)
        self._next()

    def _write(self, response: HttpResponse, *, close: bool, keep_alive_10: bool) -> None:
        transport = self._transport
        if self._closed or transport.is_closing():
            return
        head = _head(response, close, keep_alive_10)
        transport.write(head + response.body if response.body else head)
        if close:
            self._closed = True
            self._disarm()
            transport.close()
        elif not self._queue and not self._in_message:
            self._arm(self._limits.idle_timeout)

    def _answer_refusal(self, response: HttpResponse) -> None:
        """Answer, half-close, and drop what the client still sends for `LINGER` seconds.

        Closing at once, with its unread body in our buffer, would reset the
        connection and could destroy the refusal before the client read it."""
        transport = self._transport
        if self._closed or transport.is_closing():
            return
        transport.write(_head(response, True, False) + response.body)
        self._closed = True
        if not transport.can_write_eof():
            transport.close()
            return
        self._lingering = True
        transport.write_eof()
        self._reading = True
        transport.resume_reading()
        self._arm(LINGER)

    # -- timers ----------------------------------------------------------------------

    def _arm(self, delay: float) -> None:
        self._deadline = self._loop.time() + delay

    def _disarm(self) -> None:
        self._deadline = _NEVER

    def check(self, now: float) -> None:
        """The server's sweep: expire this connection if its deadline passed."""
        if now >= self._deadline:
            self._deadline = _NEVER
            self._expired()

    def _expired(self) -> None:
        if self._lingering:
            self._transport.close()
            return
        if self._busy or self._closed:
            return
        if self._in_message:
            self._refuse(HttpResponse(408))
        else:
            self._closed = True
            self._transport.close()

    def abort(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.abort()

    def close_idle(self) -> None:
        """At stop: close now unless a request is being answered."""
        if not self._busy and not self._closed:
            self._closed = True
            self._transport.close()


class HttpServer:
    def __init__(self, app: HttpApp, limits: HttpLimits) -> None:
        self.app = app
        self.limits = limits
        self.connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    def track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self, host: str, port: int, backlog: int = 1024) -> int:
        """Listen; returns the bound port (port 0: any free one)."""
        loop = asyncio.get_running_loop()
        factory: Callable[[], asyncio.Protocol] = lambda: _Connection(self)  # noqa: E731
        self._server = await loop.create_server(factory, host, port, backlog=backlog)
        self.port = self._server.sockets[0].getsockname()[1]
        self._sweeper = loop.create_task(self._sweep())
        return self.port

    async def _sweep(self) -> None:
        """Expire connections past their deadline: one timer for all, none per request.

        Timeouts are therefore late by up to `interval`."""
        limits = self.limits
        interval = min(SWEEP_INTERVAL, limits.request_timeout / 4, limits.idle_timeout / 4)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for conn in list(self.connections):
                try:
                    conn.check(now)
                except Exception:  # one connection's failure must not end every other's timeouts
                    log.exception("http timeout check failed")
                    conn.abort()

    async def stop(self, grace: float) -> None:
        """Stop listening, let requests being answered finish for up to `grace`, close every connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            conn.close_idle()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)
        for conn in list(self.connections):
            if conn._transport is not None:
                conn._transport.close()
        await server.wait_closed()
