"""The server API's HTTP/1.1 server over real sockets: keep-alive, pipelining, limits, refusals.

The application here is a small echo app: what is under test is the server's
handling of the connection, which every HTTP client relies on.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Mapping

import pytest

from meshcast.api.http_server import HttpLimits, HttpRequest, HttpResponse, HttpServer
from meshcast.testing import timeout

LIMITS = HttpLimits(max_body=4096, max_head=2048, max_pipelined=4, max_connections=8, request_timeout=0.5)


class EchoApp:
    """POST /echo answers its body; POST /slow waits for `release`; /boom raises; GET is refused."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.order: list[bytes] = []

    def screen(self, method: str, path: str, headers: Mapping[str, str]) -> HttpResponse | None:
        if method != "POST":
            return HttpResponse(405, headers=(("Allow", "POST"),))
        if headers.get("x-api-key") == "wrong":
            return HttpResponse(401)
        return None

    async def handle(self, request: HttpRequest) -> HttpResponse:
        self.order.append(request.body)
        if request.path == "/slow":
            await self.release.wait()
        if request.path == "/boom":
            raise RuntimeError("boom")
        return HttpResponse(200, request.body, "application/json")


_opened: list[asyncio.StreamWriter] = []


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    while _opened:
        writer = _opened.pop()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@pytest.fixture
async def served() -> AsyncIterator[tuple[HttpServer, EchoApp]]:
    app = EchoApp()
    server = HttpServer(app, LIMITS)
    await server.start("127.0.0.1", 0)
    yield server, app
    app.release.set()
    await server.stop(timeout(2))


async def _open(server: HttpServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client connection, closed at the test's end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    _opened.append(writer)
    return reader, writer


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response: status, headers (names in lower case), body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout(5))
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), timeout(5))
    return status, headers, body


def _post(path: str, body: bytes, extra: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


async def _closed(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), timeout(5)) == b""


async def test_keep_alive_serves_many_requests_on_one_connection(served: tuple[HttpServer, EchoApp]) -> None:
    server, _ = served
    reader, writer = await _open(server)
    for i in range(3):
        writer.write(_post("/echo", b'{"i":%d}' % i))
        status, headers, body = await _response(reader)
        assert (status, body, headers["content-type"]) == (200, b'{"i":%d}' % i, "application/json")
        assert "connection" not in headers
        assert "date" in headers


async def test_pipelined_requests_are_answered_in_order(served: tuple[HttpServer, EchoApp]) -> None:
    server, app = served
    reader, writer = await _open(server)
    # The first is slow: the others must wait behind it, not overtake it.
    writer.write(_post("/slow", b"1") + _post("/echo", b"2") + _post("/echo", b"3"))
    await asyncio.sleep(0.05)
    assert app.order == [b"1"]
    app.release.set()
    assert [(await _response(reader))[2] for _ in range(3)] == [b"1", b"2", b"3"]


async def test_connection_close_and_http_10(served: tuple[HttpServer, EchoApp]) -> None:
    server, _ = served
    reader, writer = await _open(server)
    writer.write(_post("/echo", b"x", "Connection: close\r\n"))
    status, headers, _ = await _response(reader)
    assert (status, headers["connection"]) == (200, "close")
    assert await _closed(reader)

    reader, writer = await _open(server)
    writer.write(b"POST /echo HTTP/1.0\r\nContent-Length: 1\r\n\r\nx")
    assert (await _response(reader))[0] == 200
    assert await _closed(reader)

    reader, writer = await _open(server)
    writer.write(b"POST /echo HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx")
    status, headers, _ = await _response(reader)
    assert (status, headers["connection"]) == (200, "keep-alive")
    writer.write(b"POST /echo HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\ny")
    assert (await _response(reader))[2] == b"y"


async def test_chunked_body_is_joined(served: tuple[HttpServer, EchoApp]) -> None:
    server, _ = served
    reader, writer = await _open(server)
    writer.write(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert (await _response(reader))[2] == b"abcde"


async def test_expect_100_continue_is_answered_before_the_body(served: tuple[HttpServer, EchoApp]) -> None:
    server, _ = served
    reader, writer = await _open(server)
    writer.write(b"POST /echo HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout(5)) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"ok")
    assert (await _response(reader))[2] == b"ok"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /echo HTTP/1.1\r\n\r\n", 405),
        (_post("/echo", b"{}", "X-Api-Key: wrong\r\n"), 401),
        (_post("/echo", b"x" * 5000), 413),
        (b"POST /echo HTTP/1.1\r\nX-Big: " + b"h" * 3000 + b"\r\nContent-Length: 0\r\n\r\n", 431),
        (b"POST /" + b"u" * 3000 + b" HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 414),
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", 400),
    ],
)
async def test_refusals_answer_then_close(
    served: tuple[HttpServer, EchoApp], request_bytes: bytes, status: int
) -> None:
    server, _ = served
    reader, writer = await _open(server)
    writer.write(request_bytes)
    got, headers, body = await _response(reader)
    assert (got, body, headers["connection"]) == (status, b"", "close")
    if status == 405:
        assert headers["allow"] == "POST"
    assert await _closed(reader)


async def test_a_chunked_body_over_the_limit_is_413(served: tuple[HttpServer, EchoApp]) -> None:
    server, _ = served
    reader, writer = await _open(server)
    writer.write(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(5):
        writer.write(b"400\r\n" + b"x" * 1024 + b"\r\n")
    assert (await _response(reader))[0] == 413
    assert await _closed(reader)


async def test_a_refusal_waits_for_the_answers_before_it(served: tuple[HttpServer, EchoApp]) -> None:
    server, app = served
    reader, writer = await _open(server)
    writer.write(_post("/slow", b"first") + b"GET /echo HTTP/1.1\r\n\r\n")
    await asyncio.sleep(0.05)
    app.release.set()
    assert (await _response(reader))[:1] == (200,)
    assert (await _response(reader))[0] == 405
    assert await _closed(reader)


async def test_a_handler_failure_is_500_and_the_connection_lives(served: tuple[HttpServer, EchoApp]) -> None:
    server, _ = served
    reader, writer = await _open(server)
    writer.write(_post("/boom", b"x"))
    assert (await _response(reader))[0] == 500
    writer.write(_post("/echo", b"after"))
    assert (await _response(reader))[2] == b"after"


async def test_a_slow_request_times_out_with_408(served: tuple[HttpServer, EchoApp]) -> None:
    server, _ = served
    reader, writer = await _open(server)
    writer.write(b"POST /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")  # 7 bytes never come
    assert (await _response(reader))[0] == 408
    assert await _closed(reader)


async def test_an_idle_connection_closes_after_the_idle_timeout() -> None:
    server = HttpServer(EchoApp(), HttpLimits(idle_timeout=0.2))
    await server.start("127.0.0.1", 0)
    try:
        reader, _ = await _open(server)
        assert await _closed(reader)
    finally:
        await server.stop(1)


async def test_connections_past_the_limit_get_503(served: tuple[HttpServer, EchoApp]) -> None:
    server, _ = served
    held = [await _open(server) for _ in range(LIMITS.max_connections)]
    writer = held[-1][1]
    writer.write(_post("/echo", b"x"))
    assert (await _response(held[-1][0]))[0] == 200  # every one up to the limit is served
    reader, _ = await _open(server)
    assert (await _response(reader))[0] == 503
    assert await _closed(reader)


async def test_stop_lets_a_request_in_flight_finish(served: tuple[HttpServer, EchoApp]) -> None:
    server, app = served
    reader, writer = await _open(server)
    writer.write(_post("/slow", b"last"))
    await asyncio.sleep(0.05)
    stopping = asyncio.create_task(server.stop(timeout(5)))
    await asyncio.sleep(0.05)
    app.release.set()
    assert (await _response(reader))[2] == b"last"
    await asyncio.wait_for(stopping, timeout(5))


async def test_curl_posts_a_large_body_with_expect_continue(served: tuple[HttpServer, EchoApp]) -> None:
    """curl sends ``Expect: 100-continue`` for a body over 1 KiB and waits for the 100."""
    server, _ = served
    body = b"y" * 3000
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--data-binary", "@-", "-w", "\n%{http_code}", "--expect100-timeout", "30",
        f"http://127.0.0.1:{server.port}/echo",
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(body), timeout(30))
    assert proc.returncode == 0, err
    assert out == body + b"\n200"
