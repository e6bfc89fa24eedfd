"""Runs a `Session` against one server and records what arrived, label by label.

Each client reads in the background: replies are kept by command id, pushes in
arrival order, server pings are answered (unless the client was opened with
``pong=False``) and counted, and the close code and reason are kept. A waiting
step takes what it waits for from there, so a reply and a push that a server
sends in the other order are still compared as the same session. After the
last step, whatever nobody waited for (pushes, replies, a close) is recorded
too, so an extra message is a difference, not a blind spot.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol

from meshcast.protocol import PROTOBUF_SUBPROTOCOL, Format
from meshcast.testing import timeout

from .script import Api, At, Close, Closed, Frame, Open, Ping, Push, Quiet, Raw, Reply, Send, Session, Sleep, Token, Var
from .wire import Undecodable, decode, encode

WAIT = 5.0  # seconds (scaled) a reply, push or close may take


@dataclass(frozen=True)
class Target:
    name: str
    ws_url: str
    api_url: str
    api_key: str
    secret: str


@dataclass
class Entry:
    """One recorded observation: `value` under `label`; `channel` is the context for
    per-channel normalisation, `sent` the frame that asked for it (for reports)."""

    label: str
    value: Any
    channel: str | None = None
    sent: str | None = None


@dataclass
class Record:
    target: str
    suffix: str
    entries: list[Entry] = field(default_factory=list)

    def add(self, label: str, value: Any, channel: str | None = None, sent: str | None = None) -> None:
        self.entries.append(Entry(label, value, channel, sent))


class Conn:
    """One client's WebSocket, read in the background."""

    def __init__(self, ws: ClientConnection, fmt: Format, pong: bool) -> None:
        self.ws = ws
        self.format = fmt
        self.pong = pong
        self.replies: dict[int, dict[str, Any]] = {}
        self.taken: set[int] = set()
        self.pushes: list[dict[str, Any]] = []
        self.next_push = 0
        self.pings = 0
        self.pings_seen = 0
        self.frame_types: set[str] = set()
        self.garbage: list[str] = []
        self.closed: dict[str, Any] | None = None
        self.close_seen = False
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                self.frame_types.add("text" if isinstance(message, str) else "binary")
                try:
                    replies = decode(self.format, message)
                except Undecodable as exc:
                    self.garbage.append(str(exc))
                    continue
                for reply in replies:
                    await self._take(reply)
                self._changed.set()
        except websockets.ConnectionClosed:
            pass
        finally:
            code = self.ws.close_code
            self.closed = {"code": None if code is None else int(code), "reason": self.ws.close_reason or ""}
            self._changed.set()

    async def _take(self, reply: dict[str, Any]) -> None:
        if not reply:  # a server ping: an empty reply
            self.pings += 1
            if self.pong:
                await self.ws.send("{}" if self.format is Format.JSON else b"\x00")
        elif reply.get("id"):
            self.replies[int(reply["id"])] = reply
        else:
            self.pushes.append(reply)

    async def wait(self, ready: Any, seconds: float = WAIT) -> bool:
        """Until `ready()` or the socket closes or the time is up; whether `ready()`."""
        deadline = time.monotonic() + timeout(seconds)
        while not ready():
            if self.closed is not None:
                return bool(ready())
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                return bool(ready())
        return True

    async def close(self) -> None:
        """Close (a no-op on a closed socket) and wait for the reader to end."""
        await self.ws.close()
        await asyncio.wait_for(self._reader, timeout(5))


class Run:
    """One session against one server in one format."""

    def __init__(self, target: Target, fmt: Format, suffix: str) -> None:
        self.target = target
        self.format = fmt
        self.suffix = suffix
        self.record = Record(target.name, suffix)
        self.conns: dict[str, Conn] = {}
        self.vars: dict[str, Any] = {}
        self.sent: dict[tuple[str, int], tuple[str, str | None]] = {}
        self.counts: dict[str, int] = {}

    def _count(self, key: str) -> int:
        self.counts[key] = self.counts.get(key, 0) + 1
        return self.counts[key]

    # Placeholders -----------------------------------------------------------

    def fill(self, value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("{u}", self.suffix)
        if isinstance(value, Token):
            return self.token(value)
        if isinstance(value, Var):
            return self.vars.get(value.name, value.default)
        if isinstance(value, At):
            return int(time.time() + value.seconds)
        if isinstance(value, Mapping):
            return {self.fill(k): self.fill(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.fill(v) for v in value]
        return value

    def token(self, spec: Token) -> str:
        claims: dict[str, Any] = {"sub": spec.user}
        if not spec.no_exp:
            claims["exp"] = int(time.time() + spec.ttl)
        if spec.channel is not None:
            claims["channel"] = spec.channel
        claims.update(spec.claims)
        return jwt.encode(self.fill(claims), spec.secret or self.target.secret, algorithm="HS256")

    # Steps ------------------------------------------------------------------

    async def run(self, session: Session) -> Record:
        try:
            for step in session.steps:
                await self.step(step)
            await self.finish()
        finally:
            for conn in self.conns.values():
                await conn.close()
        return self.record

    async def step(self, step: Any) -> None:
        match step:
            case Open(client, pong):
                subprotocols = [Subprotocol(PROTOBUF_SUBPROTOCOL)] if self.format is Format.PROTOBUF else None
                ws = await websockets.connect(
                    self.target.ws_url, open_timeout=timeout(5), subprotocols=subprotocols, max_size=None
                )
                self.conns[client] = Conn(ws, self.format, pong)
            case Send(client, frame):
                await self.send(client, frame)
            case Reply(client, cmd_id, capture):
                await self.reply(client, cmd_id, capture)
            case Push(client, capture, count):
                conn = self.conns[client]
                start = conn.next_push
                got = await conn.wait(lambda: len(conn.pushes) >= start + count)
                value: Any = "<no push>"
                if got:
                    conn.next_push = start + count
                    taken = conn.pushes[start : start + count]
                    value = taken[0] if count == 1 else by_channel(taken)
                    self._capture(value, capture)
                elif conn.closed is not None:
                    value, conn.close_seen = {"closed": conn.closed}, True
                self.record.add(f"{client}.push{self._count(client + '.push')}", value)
            case Quiet(client, seconds):
                conn = self.conns[client]
                await asyncio.sleep(timeout(seconds))
                arrived = by_channel(conn.pushes[conn.next_push :])
                conn.next_push = len(conn.pushes)
                self.record.add(f"{client}.quiet{self._count(client + '.quiet')}", arrived)
            case Ping(client):
                conn = self.conns[client]
                seen = conn.pings_seen
                got = await conn.wait(lambda: conn.pings > seen, seconds=WAIT * 2)
                conn.pings_seen = conn.pings
                self.record.add(f"{client}.ping{self._count(client + '.ping')}", "ping" if got else "<no ping>")
            case Closed(client):
                conn = self.conns[client]
                await conn.wait(lambda: conn.closed is not None, seconds=WAIT * 3)
                conn.close_seen = True
                self.record.add(f"{client}.close", conn.closed or "<still open>")
            case Close(client):
                await self.conns[client].close()
                self.conns[client].close_seen = True
            case Api():
                await self.api(step)
            case Sleep(seconds):
                await asyncio.sleep(timeout(seconds))
            case _:
                raise TypeError(f"not a step: {step!r}")

    async def send(self, client: str, frame: Frame) -> None:
        conn = self.conns[client]
        if isinstance(frame, Raw):
            data: str | bytes = frame.data.replace("{u}", self.suffix) if isinstance(frame.data, str) else frame.data
            shown = repr(frame.data)
        else:
            commands = frame if isinstance(frame, list) else [frame]
            filled = [self.fill(c) for c in commands]
            data = encode(self.format, filled)
            shown = "\n".join(json.dumps(_shown(c)) for c in commands)
            for command in filled:
                channel = next((b.get("channel") for b in command.values() if isinstance(b, dict)), None)
                self.sent[(client, int(command.get("id", 0)))] = (shown, channel)
        with contextlib.suppress(websockets.ConnectionClosed):  # recorded where the script waits for it
            await conn.ws.send(data)

    async def reply(self, client: str, cmd_id: int, capture: Mapping[str, str]) -> None:
        conn = self.conns[client]
        got = await conn.wait(lambda: cmd_id in conn.replies)
        value: Any = "<no reply>"
        if got:
            value = conn.replies[cmd_id]
            conn.taken.add(cmd_id)
            self._capture(value, capture)
        elif conn.closed is not None:
            value, conn.close_seen = {"closed": conn.closed}, True
        shown, channel = self.sent.get((client, cmd_id), (None, None))
        self.record.add(f"{client}#{cmd_id}", value, channel, shown)

    async def api(self, step: Api) -> None:
        body = step.body
        if isinstance(body, bytes):
            payload = body.replace(b"{u}", self.suffix.encode())
        else:
            payload = b"" if body is None else json.dumps(self.fill(body)).encode()
        headers = {"X-API-Key": self.target.api_key} if step.headers is None else dict(step.headers)
        headers = {k: self.fill(v).replace("{key}", self.target.api_key) for k, v in headers.items()}
        url = f"{self.target.api_url}/{step.method}" if step.method else self.target.api_url  # '': legacy POST /api
        status, raw = await asyncio.to_thread(_http, url, step.verb, payload, headers)
        parsed = _body(raw)
        self._capture(parsed, step.capture)
        channel = self.fill(body.get("channel")) if isinstance(body, Mapping) else None
        shown = (
            f"{step.verb} {url.partition('/api')[1]}{url.partition('/api')[2]} {payload[:300].decode(errors='replace')}"
        )
        self.record.add(f"api{self._count('api')}:{step.method}", {"status": status, "body": parsed}, channel, shown)

    def _capture(self, value: Any, capture: Mapping[str, str]) -> None:
        for name, path in capture.items():
            found = _at(value, self.fill(path))  # a path may name a channel: `{u}` is this run's suffix
            if found is not None:
                self.vars[name] = found

    async def finish(self) -> None:
        """What nobody waited for: late pushes, replies, closes and undecodable frames."""
        await asyncio.sleep(timeout(0.2))
        for client, conn in self.conns.items():
            if conn.pushes[conn.next_push :]:
                self.record.add(f"{client}.unread", by_channel(conn.pushes[conn.next_push :]))
            unawaited = [r for i, r in sorted(conn.replies.items()) if i not in conn.taken]
            if unawaited:
                self.record.add(f"{client}.unawaited", unawaited)
            if conn.closed is not None and not conn.close_seen:
                self.record.add(f"{client}.closed", conn.closed)
            if conn.garbage:
                self.record.add(f"{client}.garbage", conn.garbage)
            if self.format is Format.JSON and conn.frame_types:
                self.record.add(f"{client}.frames", sorted(conn.frame_types))


def _http(url: str, verb: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    host, _, path = url.removeprefix("http://").partition("/")
    connection = http.client.HTTPConnection(host, timeout=timeout(10))
    try:
        connection.request(verb, "/" + path, body=body or None, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def by_channel(pushes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`pushes` sorted by channel, each channel's in arrival order (a stable sort)."""
    return sorted(pushes, key=lambda p: str(p.get("push", {}).get("channel", "")))


def _body(raw: bytes) -> Any:
    """A JSON body, JSON lines (the legacy ``POST /api``) as a list, else its text."""
    if not raw:
        return ""
    try:
        return json.loads(raw)
    except ValueError:
        pass
    try:
        return [json.loads(line) for line in raw.splitlines() if line.strip()]
    except ValueError:
        return {"$text": raw.decode(errors="replace")[:200]}


def _at(value: Any, path: str) -> Any:
    """`value`'s item at a dotted path (list indexes as numbers); None if absent."""
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def _shown(value: Any) -> Any:
    """A command as reports show it: tokens and variables by what they stand for."""
    if isinstance(value, Token):
        kind = f"sub token {value.channel}" if value.channel is not None else "token"
        return f"<{kind} user={value.user!r} ttl={value.ttl:g}{' (other key)' if value.secret else ''}>"
    if isinstance(value, Var):
        return f"<{value.name}>"
    if isinstance(value, At):
        return f"<now{value.seconds:+g}s>"
    if isinstance(value, Mapping):
        return {k: _shown(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_shown(v) for v in value]
    return value
