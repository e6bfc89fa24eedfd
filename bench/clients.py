"""picows WebSocket clients for the two targets, plus the delivery sink.

* ``CentrifugoConn`` speaks the Centrifugo client protocol v2 (JSON,
  newline-delimited commands/replies) against the Meshcast gateway.
* ``NatsWsConn`` speaks the NATS text protocol over nats-server's own
  websocket listener (the baseline).

Both feed received publications into a ``DeliverySink``, which computes the
latency from the ``bench_ts`` nanosecond timestamp embedded by the publisher.
The hot path avoids JSON parsing: it finds the marker and parses one integer.
"""

from __future__ import annotations

import asyncio
import json
import time
from array import array
from collections.abc import Callable, MutableSequence
from dataclasses import dataclass, field
from typing import Any, cast

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

MARKER = b'"bench_ts":'
_MARKER_LEN = len(MARKER)
_NEVER = 1 << 62
_NATS_CONNECT = b'CONNECT {"verbose":false,"pedantic":false,"protocol":1}\r\n'


class CommandError(RuntimeError):
    """The server answered a command with an error, or the connection failed."""


def channel_subject(channel: str) -> str:
    """Map a Centrifugo-style channel name to a NATS subject for the baseline."""
    return channel.replace(":", ".")


def bench_payload(ts_ns: int) -> bytes:
    """The publication body: a JSON object carrying the send time in ns."""
    return b'{"bench_ts":%d}' % ts_ns


def parse_ts(data: bytes, start: int, end: int) -> int:
    """Return the ``bench_ts`` value inside ``data[start:end]``, or -1."""
    pos = data.find(MARKER, start, end)
    if pos < 0:
        return -1
    value_start = pos + _MARKER_LEN
    value_end = data.find(b"}", value_start, end)
    if value_end < 0:
        return -1
    return int(data[value_start:value_end])


@dataclass
class DeliverySink:
    """Per-process delivery counters and latency samples."""

    counters: MutableSequence[int]
    slot: int
    max_samples: int
    record_from_ns: int = _NEVER
    delivered: int = 0
    measured: int = 0
    first_recv_ns: int = 0
    last_recv_ns: int = 0
    disconnects: int = 0
    pings: int = 0
    errors: int = 0
    first_error: str = ""
    latencies: array[int] = field(default_factory=lambda: array("q"))

    def restart(self, record_from_ns: int) -> None:
        """Open a new measured window: publications sent from ``record_from_ns`` on."""
        self.record_from_ns = record_from_ns
        self.measured = 0
        self.first_recv_ns = 0
        self.last_recv_ns = 0
        self.latencies = array("q")

    def deliver(self, sent_ns: int, now_ns: int) -> None:
        """Account one publication received at ``now_ns``."""
        self.delivered += 1
        if sent_ns < self.record_from_ns:
            return
        self.measured += 1
        if self.first_recv_ns == 0:
            self.first_recv_ns = now_ns
        self.last_recv_ns = now_ns
        if len(self.latencies) < self.max_samples:
            self.latencies.append(now_ns - sent_ns)

    def publish_progress(self) -> None:
        """Expose the delivery count to the publisher (shared memory)."""
        self.counters[self.slot] = self.delivered

    def error(self, message: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = message[:300]


class _BaseConn(WSListener):
    """Common picows plumbing: transport, close handling, disconnect accounting."""

    def __init__(self, sink: DeliverySink | None) -> None:
        super().__init__()
        self.sink = sink
        self.transport: WSTransport | None = None
        self.closing = False
        self.disconnected = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.disconnected = True
        if not self.closing and self.sink is not None:
            self.sink.disconnects += 1
        self._fail_waiters("connection closed")

    def _fail_waiters(self, reason: str) -> None:
        """Overridden by subclasses that wait for replies."""

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.disconnected:
            self.transport.send(WSMsgType.TEXT, data)

    def close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.disconnected:
            self.transport.send_close(WSCloseCode.OK)
            self.transport.disconnect()

    def handle_control_frame(self, transport: WSTransport, frame: WSFrame) -> bool:
        """Handle CLOSE frames; return True when the frame carried no data."""
        msg_type = frame.msg_type
        if msg_type == WSMsgType.CLOSE:
            if not self.closing and self.sink is not None:
                self.sink.error(f"server closed: {frame.get_close_code()} {frame.get_close_reason()}")
            self.closing = True
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return True
        return msg_type not in (WSMsgType.TEXT, WSMsgType.BINARY)


class CentrifugoConn(_BaseConn):
    """One Centrifugo-protocol client connection (subscriber or publisher)."""

    def __init__(self, sink: DeliverySink | None) -> None:
        super().__init__(sink)
        self._next_id = 0
        self._waiters: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.pending_publishes = 0
        self.acked = 0
        self.publish_errors = 0
        self.first_error = ""

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def command(self, body: dict[str, Any], limit_s: float) -> dict[str, Any]:
        """Send one command and wait for its reply; raise CommandError on error."""
        cmd_id = self.next_id()
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters[cmd_id] = fut
        self.send(json.dumps({"id": cmd_id, **body}, separators=(",", ":")).encode())
        try:
            reply = await asyncio.wait_for(fut, limit_s)
        finally:
            self._waiters.pop(cmd_id, None)
        if "error" in reply:
            raise CommandError(f"{next(iter(body))}: {reply['error']}")
        return reply

    def send_publish(self, channel_json: bytes, ts_ns: int) -> None:
        """Fire one publish command; its reply is counted in on_ws_frame."""
        cmd_id = self.next_id()
        self.pending_publishes += 1
        self.send(b'{"id":%d,"publish":{"channel":%s,"data":%s}}' % (cmd_id, channel_json, bench_payload(ts_ns)))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if self.handle_control_frame(transport, frame):
            return
        data = frame.get_payload_as_bytes()
        now_ns = time.time_ns()
        sink = self.sink
        pos = 0
        size = len(data)
        while pos < size:
            eol = data.find(b"\n", pos)
            if eol < 0:
                eol = size
            if eol > pos:
                sent_ns = parse_ts(data, pos, eol)
                if sent_ns >= 0 and sink is not None:
                    sink.deliver(sent_ns, now_ns)
                else:
                    self._on_line(data[pos:eol])
            pos = eol + 1
        if sink is not None:
            sink.publish_progress()

    def _on_line(self, line: bytes) -> None:
        if line.strip() == b"{}":
            self.send(b"{}")
            if self.sink is not None:
                self.sink.pings += 1
            return
        try:
            reply = json.loads(line)
        except ValueError:
            self._record_error(f"bad json: {line[:100]!r}")
            return
        if not isinstance(reply, dict):
            return
        cmd_id = reply.get("id")
        if isinstance(cmd_id, int):
            self._on_reply(cmd_id, reply)

    def _on_reply(self, cmd_id: int, reply: dict[str, Any]) -> None:
        fut = self._waiters.get(cmd_id)
        if fut is not None:
            if not fut.done():
                fut.set_result(reply)
            return
        self.pending_publishes -= 1
        if "error" in reply:
            self.publish_errors += 1
            self._record_error(f"publish: {reply['error']}")
        else:
            self.acked += 1

    def _record_error(self, message: str) -> None:
        if not self.first_error:
            self.first_error = message[:300]
        if self.sink is not None:
            self.sink.error(message)

    def _fail_waiters(self, reason: str) -> None:
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(CommandError(reason))


class NatsWsConn(_BaseConn):
    """A NATS text-protocol subscriber over nats-server's websocket listener."""

    def __init__(self, sink: DeliverySink | None) -> None:
        super().__init__(sink)
        self._buf = b""
        self._pong: asyncio.Future[None] | None = None

    async def subscribe(self, subject: str, limit_s: float) -> None:
        """CONNECT, SUB, then PING and wait for PONG (the SUB is then active)."""
        self._pong = asyncio.get_running_loop().create_future()
        self.send(_NATS_CONNECT + b"SUB %s 1\r\nPING\r\n" % subject.encode())
        await asyncio.wait_for(self._pong, limit_s)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if self.handle_control_frame(transport, frame):
            return
        data = frame.get_payload_as_bytes()
        if self._buf:
            data = self._buf + data
            self._buf = b""
        pos = self._parse(data, time.time_ns())
        if pos < len(data):
            self._buf = data[pos:]
        if self.sink is not None:
            self.sink.publish_progress()

    def _parse(self, data: bytes, now_ns: int) -> int:
        """Consume complete protocol items; return the offset of the remainder."""
        pos = 0
        size = len(data)
        sink = self.sink
        while True:
            eol = data.find(b"\r\n", pos)
            if eol < 0:
                return pos
            if data.startswith(b"MSG ", pos):
                start = eol + 2
                end = start + int(data[data.rfind(b" ", pos, eol) + 1 : eol])
                if end + 2 > size:
                    return pos
                sent_ns = parse_ts(data, start, end)
                if sent_ns >= 0 and sink is not None:
                    sink.deliver(sent_ns, now_ns)
                pos = end + 2
                continue
            self._on_op(data[pos:eol])
            pos = eol + 2

    def _on_op(self, line: bytes) -> None:
        if line.startswith(b"PING"):
            self.send(b"PONG\r\n")
            if self.sink is not None:
                self.sink.pings += 1
        elif line.startswith(b"PONG"):
            if self._pong is not None and not self._pong.done():
                self._pong.set_result(None)
        elif line.startswith(b"-ERR"):
            message = line.decode(errors="replace")
            if self.sink is not None:
                self.sink.error(message)
            if self._pong is not None and not self._pong.done():
                self._pong.set_exception(CommandError(message))

    def _fail_waiters(self, reason: str) -> None:
        if self._pong is not None and not self._pong.done():
            self._pong.set_exception(CommandError(reason))


async def open_centrifugo(
    url: str,
    token: str,
    sink: DeliverySink | None,
    limit_s: float,
    factory: Callable[[], CentrifugoConn] | None = None,
) -> CentrifugoConn:
    """Open a gateway connection (a ``factory`` listener, default CentrifugoConn) and send ``connect``."""
    _, listener = await ws_connect(
        factory or (lambda: CentrifugoConn(sink)),
        url,
        websocket_handshake_timeout=limit_s,
        read_buffer_init_size=4096,
    )
    conn = cast("CentrifugoConn", listener)
    try:
        await conn.command({"connect": {"token": token}}, limit_s)
    except BaseException:
        conn.close()
        raise
    return conn


async def open_nats_ws(url: str, sink: DeliverySink | None, limit_s: float) -> NatsWsConn:
    """Open a websocket connection to nats-server."""
    _, listener = await ws_connect(
        lambda: NatsWsConn(sink),
        url,
        websocket_handshake_timeout=limit_s,
        read_buffer_init_size=4096,
    )
    return cast("NatsWsConn", listener)
