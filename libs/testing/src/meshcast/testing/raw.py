"""A raw protocol client in either format, for tests that count every frame.

It speaks the client protocol v2 itself (JSON lines or varint-delimited
protobuf), reads in a background task and records every publication's
offset per channel, so a test can compare what each subscriber got with
what was published, exactly.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import websockets
from google.protobuf.json_format import MessageToDict
from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol

from meshcast.proto.client_pb2 import Command, Reply
from meshcast.protocol import PROTOBUF_SUBPROTOCOL, Format
from meshcast.protocol.codec import encode_varint, read_varint

from .timeouts import within


def replies(fmt: Format, raw: str | bytes) -> list[dict[str, Any]]:
    """Every reply of one frame as a JSON-shaped dict (protobuf ones converted)."""
    if fmt is Format.JSON:
        text = raw.decode() if isinstance(raw, bytes) else raw
        return [json.loads(line) for line in text.split("\n") if line]
    assert isinstance(raw, bytes)
    out, pos = [], 0
    while pos < len(raw):
        size, pos = read_varint(raw, pos)
        if size < 0:
            raise ValueError("not a varint-delimited protobuf frame")
        reply = Reply()
        reply.ParseFromString(raw[pos : pos + size])
        pos += size
        out.append(MessageToDict(reply, preserving_proto_field_name=True))
    return out


@dataclass
class Received:
    """What one channel's subscriber was sent."""

    offsets: list[int] = field(default_factory=list)
    unsubscribed: list[dict[str, Any]] = field(default_factory=list)
    joins: int = 0
    leaves: int = 0


class RawClient:
    def __init__(self, ws: ClientConnection, fmt: Format) -> None:
        self.ws = ws
        self.format = fmt
        self.channels: dict[str, Received] = {}
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())
        self.changed = asyncio.Event()

    @classmethod
    async def open(cls, url: str, fmt: Format = Format.JSON) -> RawClient:
        subprotocols = [Subprotocol(PROTOBUF_SUBPROTOCOL)] if fmt is Format.PROTOBUF else None
        ws = await websockets.connect(url, open_timeout=5, subprotocols=subprotocols)
        return cls(ws, fmt)

    async def command(self, method: str, body: dict[str, Any], seconds: float = 5.0) -> dict[str, Any]:
        self._next_id += 1
        cmd_id = self._next_id
        future = self._waiting[cmd_id] = asyncio.get_running_loop().create_future()
        if self.format is Format.JSON:
            await self.ws.send(json.dumps({"id": cmd_id, method: body}))
        else:
            pb = Command(id=cmd_id)
            field_ = getattr(pb, method)
            for key, value in body.items():
                if method == "publish" and key == "data":
                    value = json.dumps(value).encode()
                setattr(field_, key, value)
            field_.SetInParent()
            data = pb.SerializeToString()
            await self.ws.send(encode_varint(len(data)) + data)
        return await within(future, seconds)

    async def subscribe(self, channel: str, **options: Any) -> dict[str, Any]:
        self.channels.setdefault(channel, Received())
        reply = await self.command("subscribe", {"channel": channel, **options})
        assert "subscribe" in reply, reply
        result: dict[str, Any] = reply["subscribe"]
        return result

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                for reply in replies(self.format, raw):
                    self._take(reply)
        except websockets.ConnectionClosed:
            pass
        finally:
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(ConnectionError("closed"))

    def _take(self, reply: dict[str, Any]) -> None:
        cmd_id = reply.get("id")
        if cmd_id:
            future = self._waiting.pop(int(cmd_id), None)
            if future is not None and not future.done():
                future.set_result(reply)
            return
        push = reply.get("push")
        if not push:
            return
        received = self.channels.setdefault(push.get("channel", ""), Received())
        if "pub" in push:
            received.offsets.append(int(push["pub"].get("offset", 0)))
        elif "unsubscribe" in push:
            received.unsubscribed.append(push["unsubscribe"])
        elif "join" in push:
            received.joins += 1
        elif "leave" in push:
            received.leaves += 1
        self.changed.set()

    async def close(self) -> None:
        """A polite close: the close handshake, then the reader ends."""
        await self.ws.close()
        await within(self._reader)

    async def abort(self) -> None:
        """An abrupt close: the TCP connection dropped without a close frame."""
        self.ws.transport.abort()
        await within(self._reader)
