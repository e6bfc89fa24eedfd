"""A minimal HTTP/1.1 keep-alive client connection for the API load generator.

One request at a time per connection (no pipelining), ``Content-Length``
bodies only (what the server API answers): a chunked
or unparsable response fails the request with ``HttpError`` and closes the
connection. It exists because aiohttp's client spends about as much CPU per
request as the server API under test (measured on the 2-core development
machine: ~165 us against the API's ~180 us; this client ~35 us): on a shared
machine that CPU would be taken from the API, and the figure would describe
the client.
"""

from __future__ import annotations

import asyncio
from typing import cast

_HEAD_END = b"\r\n\r\n"
_LENGTH = b"\r\ncontent-length:"
_CHUNKED = b"transfer-encoding: chunked"


class HttpError(RuntimeError):
    """The connection failed, or the response is not one this client reads."""


def request_head(host: str, port: int, path: str, headers: dict[str, str]) -> bytes:
    """A POST request head up to ``Content-Length:`` (the caller appends the length and the body)."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\nContent-Length: ").encode()


class HttpConn(asyncio.Protocol):
    """One keep-alive connection; ``post`` sends a request and returns (status, body)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._lost: str = ""

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self._lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's is not an asyncio.Transport subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = f"connection lost: {exc}" if exc else "connection closed by the server"
        self._fail(self._lost)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._waiter is None:
            self._abort("data without a request")
            return
        self._parse()

    def _parse(self) -> None:
        buf = self._buf
        head_end = buf.find(_HEAD_END)
        if head_end < 0:
            return
        head = bytes(buf[:head_end]).lower()
        at = head.find(_LENGTH)
        if at < 0 or _CHUNKED in head:
            self._abort(f"no Content-Length in {head[:200]!r}")
            return
        value_end = head.find(b"\r\n", at + 2)
        try:
            status = int(head[9:12])
            length = int(head[at + len(_LENGTH) : value_end if value_end >= 0 else len(head)])
        except ValueError:
            self._abort(f"bad response head {head[:200]!r}")
            return
        total = head_end + len(_HEAD_END) + length
        if len(buf) < total:
            return
        body = bytes(buf[head_end + len(_HEAD_END) : total])
        del buf[:total]
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((status, body))

    def _abort(self, reason: str) -> None:
        self._lost = reason
        self._fail(reason)
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, reason: str) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(HttpError(reason))

    def post(self, head: bytes, body: bytes) -> asyncio.Future[tuple[int, bytes]]:
        """Send ``head`` (from `request_head`) with ``body``; the future gives (status, body)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        if not self.usable or self._waiter is not None:
            waiter.set_exception(HttpError(self._lost or "a request is already in flight"))
            return waiter
        assert self.transport is not None
        self._waiter = waiter
        self.transport.write(b"%s%d\r\n\r\n%s" % (head, len(body), body))
        return waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connect(host: str, port: int, limit_s: float) -> HttpConn:
    """Open one connection (bounded by ``limit_s``)."""
    loop = asyncio.get_running_loop()
    _, conn = await asyncio.wait_for(loop.create_connection(HttpConn, host, port), limit_s)
    return conn
