"""A swarm of protocol clients that survive faults the way SDK clients do, recording everything.

Each `Member` speaks the client protocol v2 itself (JSON or protobuf), answers
server pings, gives up on a server silent for longer than its ping interval
allows, and reconnects with backoff, usually through a balancer to another
gateway. On every reconnect it subscribes again, recovering each history
channel from the last offset it delivered, exactly as centrifuge-js does.
After an unsubscribe push 2500 it subscribes again with recovery as well.

It records, per channel, every publication delivered (offset and id, in
arrival order, recovered ones included) and every time it was *told* it
missed something: ``recovered: false``, error 112 (members that set the
reject-unrecovered flag) or an unsubscribe push 2500. `meshcast.testing.checker`
judges those logs against the stream. Publication data is ``{"w": writer,
"n": number}``; its id is ``"<writer>:<number>"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol

from meshcast.proto.client_pb2 import (
    Command,
    ConnectRequest,
    Publication,
    PublishRequest,
    Reply,
    SubscribeRequest,
)
from meshcast.protocol import PROTOBUF_SUBPROTOCOL, Format
from meshcast.protocol.codec import encode_varint, read_varint

from .checker import SubscriberLog, Told

# SubscribeRequest.flag: answer error 112 rather than "recovered: false".
REJECT_UNRECOVERED = 2
UNRECOVERABLE_POSITION = 112
INSUFFICIENT_STATE = 2500
_PONG: dict[Format, str | bytes] = {Format.JSON: "{}", Format.PROTOBUF: b"\x00"}


def pub_id(data: bytes | dict[str, Any] | Any) -> str:
    """The id of a publication the swarm (or its backend) sent: ``<writer>:<n>``."""
    value = json.loads(data) if isinstance(data, bytes | str) else data
    if isinstance(value, dict) and "w" in value:
        return f"{value['w']}:{value.get('n', 0)}"
    return "?"


def pub_data(writer: str, n: int) -> bytes:
    return json.dumps({"w": writer, "n": n}, separators=(",", ":")).encode()


class CommandFailed(Exception):
    """A reply with an error (code, message)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code


@dataclass
class Channel:
    """One channel a member keeps subscribed, with what it was sent."""

    name: str
    history: bool
    log: SubscriberLog
    epoch: str = ""
    position: int | None = None  # the last offset delivered (history channels)
    subscribed: bool = False
    subscribes: int = 0
    recovered: int = 0

    def deliver(self, offset: int, data: bytes | dict[str, Any]) -> None:
        self.log.deliveries.append((offset, pub_id(data)))
        if self.history and offset > (self.position or 0):
            self.position = offset


@dataclass
class Clock:
    """The phase the run is in: told events are attributed to it."""

    phase: int = 0


class Member:
    """One simulated client: connect, subscribe, stay subscribed across anything."""

    def __init__(
        self,
        name: str,
        url: str,
        fmt: Format,
        token: str,
        channels: list[tuple[str, bool]],
        *,
        clock: Clock,
        reject_unrecovered: bool = False,
        open_timeout: float = 3.0,
        command_timeout: float = 25.0,
        stall_slack: float = 3.0,
    ) -> None:
        self.name = name
        self.url = url
        self.format = fmt
        self.token = token
        self.clock = clock
        self.reject_unrecovered = reject_unrecovered
        self.channels = {
            ch: Channel(ch, history, SubscriberLog(subscriber=name, channel=ch)) for ch, history in channels
        }
        self.open_timeout = open_timeout
        self.command_timeout = command_timeout
        self.stall_slack = stall_slack
        self.client_id = ""
        self.connects = 0
        self.closes: list[int] = []
        self.errors: list[str] = []
        self._ws: ClientConnection | None = None
        self._next_id = 0
        self._waiting: dict[int, tuple[asyncio.Future[Any], str, Callable[[Any], Any] | None]] = {}
        self._resubscribe: set[str] = set()
        self._wake = asyncio.Event()
        self._last_frame = 0.0
        self._ping_every = 25.0

    # -- state seen from outside ------------------------------------------------

    @property
    def connected(self) -> bool:
        return bool(self.client_id)

    def ready(self) -> bool:
        """Connected and subscribed to every channel."""
        return self.connected and all(c.subscribed for c in self.channels.values())

    # -- the run loop -------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        attempt = 0
        while not stop.is_set():
            try:
                ws = await websockets.connect(
                    self.url,
                    open_timeout=self.open_timeout,
                    subprotocols=[Subprotocol(PROTOBUF_SUBPROTOCOL)] if self.format is Format.PROTOBUF else None,
                    ping_interval=None,
                    close_timeout=1,
                    max_size=None,
                )
            except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI):
                attempt += 1
                await self._pause(stop, attempt)
                continue
            try:
                await self._session(ws, stop)
                attempt = 0
            except (ConnectionError, TimeoutError, websockets.ConnectionClosed, CommandFailed) as exc:
                self.errors.append(type(exc).__name__)
                attempt += 1
            finally:
                self._lost(ws)
            if ws.close_code is not None:
                self.closes.append(ws.close_code)
            if not stop.is_set():
                await self._pause(stop, attempt)

    async def _pause(self, stop: asyncio.Event, attempt: int) -> None:
        delay = min(2.0, 0.1 * 2 ** min(attempt, 5)) * random.uniform(0.5, 1.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)

    def _lost(self, ws: ClientConnection) -> None:
        self.client_id = ""
        self._ws = None
        for ch in self.channels.values():
            ch.subscribed = False
        for future, _, _ in self._waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("connection lost"))
        self._waiting.clear()
        ws.transport.abort()

    async def _session(self, ws: ClientConnection, stop: asyncio.Event) -> None:
        self._ws = ws
        self._last_frame = time.monotonic()
        reader = asyncio.create_task(self._read(ws))
        try:
            reply = await self._command(ConnectRequest(token=self.token), "connect")
            self._ping_every = float(reply.get("ping", 25) or 25)
            self.client_id = str(reply.get("client", ""))
            self.connects += 1
            for ch in self.channels.values():
                await self._subscribe(ch)
            while not stop.is_set() and not reader.done():
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 0.5)
                if time.monotonic() - self._last_frame > self._ping_every + self.stall_slack:
                    raise TimeoutError("server silent past its ping interval")
                for name in sorted(self._resubscribe):
                    self._resubscribe.discard(name)
                    await self._subscribe(self.channels[name])
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 2)

    # -- subscribe and recovery -------------------------------------------------

    async def _subscribe(self, ch: Channel) -> None:
        for attempt in range(20):
            request = SubscribeRequest(channel=ch.name)
            recovering = ch.history and ch.position is not None
            if recovering:
                request.recover = True
                request.epoch = ch.epoch
                request.offset = ch.position or 0
                if self.reject_unrecovered:
                    request.flag = REJECT_UNRECOVERED
            try:
                await self._command(request, "subscribe", on_reply=functools.partial(self._subscribed, ch))
                return
            except CommandFailed as exc:
                if exc.code == UNRECOVERABLE_POSITION and ch.position is not None:
                    # Told: start afresh; the window is closed by the fresh subscribe's position.
                    ch.log.told.append(Told("error 112", ch.position, None, self.clock.phase))
                    ch.position = None
                    continue
                if exc.code in (100, 108, 111) and attempt < 19:  # temporary: try again, as SDKs do
                    await asyncio.sleep(min(1.0, 0.1 * (attempt + 1)))
                    continue
                raise

    def _subscribed(self, ch: Channel, result: dict[str, Any] | Reply) -> None:
        """Applied by the reader as the reply arrives, before any later push."""
        ch.subscribed = True
        ch.subscribes += 1
        if not ch.history:
            return
        res = _subscribe_result(result)
        offset, epoch = int(res.get("offset", 0)), str(res.get("epoch", ""))
        pending = ch.log.told[-1] if ch.log.told and ch.log.told[-1].resumed is None else None
        if res.get("was_recovering"):
            if res.get("recovered"):
                ch.recovered += 1
                for pub in res.get("publications", []):
                    ch.deliver(int(pub[0]), pub[1])
            else:
                ch.log.told.append(Told("recovered false", ch.position or 0, offset, self.clock.phase))
                ch.position = offset
        elif pending is not None:
            pending.resumed = offset
            ch.position = offset
        else:
            if ch.log.start is None:
                ch.log.start = offset
            ch.position = offset
        ch.epoch = epoch
        if ch.position is not None and offset > ch.position:
            ch.position = offset

    # -- publishing ---------------------------------------------------------------

    async def publish(self, channel: str, data: bytes) -> bool:
        """True once the gateway acknowledged it; False when refused or the connection went."""
        if not self.connected:
            return False
        try:
            await self._command(PublishRequest(channel=channel, data=data), "publish")
        except (CommandFailed, ConnectionError, TimeoutError, websockets.ConnectionClosed):
            return False
        return True

    # -- wire ---------------------------------------------------------------------

    async def _command(self, request: Any, method: str, on_reply: Callable[[Any], Any] | None = None) -> dict[str, Any]:
        ws = self._ws
        if ws is None:
            raise ConnectionError("not connected")
        self._next_id += 1
        cmd_id = self._next_id
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[cmd_id] = (future, method, on_reply)
        if self.format is Format.JSON:
            body = _json_body(method, request)
            await ws.send(json.dumps({"id": cmd_id, method: body}))
        else:
            pb = Command(id=cmd_id)
            getattr(pb, method).CopyFrom(request)
            data = pb.SerializeToString()
            await ws.send(encode_varint(len(data)) + data)
        try:
            result: dict[str, Any] = await asyncio.wait_for(future, self.command_timeout)
        finally:
            self._waiting.pop(cmd_id, None)
        return result

    async def _read(self, ws: ClientConnection) -> None:
        async for raw in ws:
            self._last_frame = time.monotonic()
            pings = self._take_frame(raw)
            for _ in range(pings):
                await ws.send(_PONG[self.format])
            self._wake.set()

    def _take_frame(self, raw: str | bytes) -> int:
        pings = 0
        if self.format is Format.JSON:
            text = raw.decode() if isinstance(raw, bytes) else raw
            for line in text.split("\n"):
                if line:
                    pings += self._take_json(json.loads(line))
        else:
            assert isinstance(raw, bytes)
            pos = 0
            while pos < len(raw):
                size, pos = read_varint(raw, pos)
                if size < 0:
                    break  # not a protobuf frame the gateway would send
                reply = Reply()
                reply.ParseFromString(raw[pos : pos + size])
                pos += size
                pings += self._take_proto(reply)
        return pings

    def _answer(self, cmd_id: int, error: tuple[int, str] | None, reply: Any) -> None:
        entry = self._waiting.get(cmd_id)
        if entry is None:
            return
        future, method, on_reply = entry
        if future.done():
            return
        if error is not None:
            future.set_exception(CommandFailed(*error))
            return
        if isinstance(reply, dict):
            body: Any = reply.get(method, {})
            as_dict: dict[str, Any] = body
        else:
            body = getattr(reply, method)
            as_dict = {"client": body.client, "ping": body.ping} if method == "connect" else {}
        if on_reply is not None:
            on_reply(body)
        future.set_result(as_dict)

    def _take_json(self, reply: dict[str, Any]) -> int:
        cmd_id = int(reply.get("id", 0))
        if cmd_id:
            err = reply.get("error")
            error = (int(err.get("code", 0)), str(err.get("message", ""))) if err else None
            self._answer(cmd_id, error, reply)
            return 0
        push = reply.get("push")
        if not push:
            return 1  # an empty reply is the server's ping
        ch = self.channels.get(push.get("channel", ""))
        if ch is None:
            return 0
        if "pub" in push:
            ch.deliver(int(push["pub"].get("offset", 0)), push["pub"].get("data", {}))
        elif "unsubscribe" in push:
            self._unsubscribed(ch, int(push["unsubscribe"].get("code", 0)))
        return 0

    def _take_proto(self, reply: Reply) -> int:
        if reply.id:
            error = (reply.error.code, reply.error.message) if reply.HasField("error") else None
            self._answer(reply.id, error, reply)
            return 0
        if not reply.HasField("push"):
            return 1
        push = reply.push
        ch = self.channels.get(push.channel)
        if ch is None:
            return 0
        if push.HasField("pub"):
            ch.deliver(push.pub.offset, push.pub.data)
        elif push.HasField("unsubscribe"):
            self._unsubscribed(ch, push.unsubscribe.code)
        return 0

    def _unsubscribed(self, ch: Channel, code: int) -> None:
        ch.subscribed = False
        if code == INSUFFICIENT_STATE and ch.history:
            ch.log.told.append(Told("unsubscribe 2500", ch.position or 0, ch.position or 0, self.clock.phase))
        self._resubscribe.add(ch.name)


def _json_body(method: str, request: Any) -> dict[str, Any]:
    if method == "connect":
        return {"token": request.token}
    if method == "publish":
        return {"channel": request.channel, "data": json.loads(request.data)}
    body: dict[str, Any] = {"channel": request.channel}
    if request.recover:
        body.update(recover=True, epoch=request.epoch, offset=request.offset)
    if request.flag:
        body["flag"] = request.flag
    return body


def _subscribe_result(result: dict[str, Any] | Any) -> dict[str, Any]:
    """A subscribe result of either format as a dict; publications as (offset, data)."""
    if isinstance(result, dict):
        out = dict(result)
        out["publications"] = [(int(p.get("offset", 0)), p.get("data", {})) for p in result.get("publications", [])]
        return out
    pubs: list[Publication] = list(result.publications)
    return {
        "offset": result.offset,
        "epoch": result.epoch,
        "was_recovering": result.was_recovering,
        "recovered": result.recovered,
        "publications": [(p.offset, p.data) for p in pubs],
    }


@dataclass
class Writer:
    """Publishes numbered publications into one channel through a member; records the acks."""

    name: str
    channel: str
    acked: dict[str, int] = field(default_factory=dict)  # id -> phase
    refused: int = 0
    sent: int = 0
