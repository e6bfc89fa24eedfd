"""The protobuf format says what the JSON format says: the same replies, pushes,
error codes and disconnects for the same commands.

A JSON client and a protobuf client do the same things side by side against one
gateway (and the history service); every protobuf reply is turned into the
JSON codec's own rendering of that message, so the two transcripts must be
equal, field for field.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol

from meshcast.bus import Subjects, connect
from meshcast.gateway.app import Gateway
from meshcast.proto.bus_pb2 import Control, DisconnectUser
from meshcast.proto.client_pb2 import Reply
from meshcast.protocol import PROTOBUF_SUBPROTOCOL, Format
from meshcast.protocol.codec import JsonCodec, encode_varint, message_to_json
from meshcast.testing import token_ttl, within

from .harness import GatewayFactory, HistoryFactory, PresenceFactory, open_ws, token

NAMESPACES = """
namespaces:
  - name: room
    history_size: 100
    history_ttl: 300
    recovery: true
    allow_publish: true
    presence: true
    join_leave: true
  - name: news
    allow_publish: false
"""

FORMATS = (Format.JSON, Format.PROTOBUF)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


class FormatClient:
    """A raw client in one format: JSON-shaped commands in, and every reply as
    the JSON codec renders it (protobuf replies converted with the same code)."""

    def __init__(self, ws: ClientConnection, fmt: Format) -> None:
        self.ws = ws
        self.format = fmt
        self.pushes: list[dict[str, Any]] = []
        self._next_id = 0

    @classmethod
    async def open(cls, gateway: Gateway, fmt: Format) -> FormatClient:
        protocols = [Subprotocol(PROTOBUF_SUBPROTOCOL)] if fmt is Format.PROTOBUF else None
        return cls(await open_ws(gateway, subprotocols=protocols), fmt)

    async def send(self, command: dict[str, Any]) -> None:
        line = json.dumps(command)
        if self.format is Format.JSON:
            await self.ws.send(line)
            return
        decoded = JsonCodec().decode_commands(line, 1)
        assert isinstance(decoded, list), decoded
        data = decoded[0].SerializeToString()
        await self.ws.send(encode_varint(len(data)) + data)

    async def recv(self) -> list[dict[str, Any]]:
        raw = await within(self.ws.recv())
        if self.format is Format.JSON:
            text = raw.decode() if isinstance(raw, bytes) else raw
            return [json.loads(line) for line in text.split("\n") if line]
        assert isinstance(raw, bytes)
        out, pos = [], 0
        while pos < len(raw):
            size, pos = _varint(raw, pos)
            out.append(json.loads(message_to_json(Reply.FromString(raw[pos : pos + size]))))
            pos += size
        return out

    async def command(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        """The reply to one command, without its id."""
        self._next_id += 1
        await self.send({"id": self._next_id, method: body})
        while True:
            for reply in await self.recv():
                if reply.get("id") == self._next_id:
                    del reply["id"]
                    return reply
                if reply:  # an empty reply is a ping
                    self.pushes.append(reply)

    async def next_push(self) -> dict[str, Any]:
        while not self.pushes:
            self.pushes.extend(r for r in await self.recv() if r)
        return self.pushes.pop(0)

    async def close_code(self) -> tuple[int | None, str | None]:
        await within(self.ws.wait_closed())
        return self.ws.close_code, self.ws.close_reason


async def connected(gateway: Gateway, fmt: Format, user: str, ttl: float = 3600) -> FormatClient:
    client = await FormatClient.open(gateway, fmt)
    reply = await client.command("connect", {"token": token(user, ttl=ttl)})
    assert "connect" in reply, reply
    return client


def without_client_ids(reply: dict[str, Any]) -> dict[str, Any]:
    """`reply` without the connection-specific client id of a connect or refresh reply."""
    out: dict[str, Any] = json.loads(json.dumps(reply))
    for key in ("connect", "refresh"):
        if key in out:
            out[key].pop("client", None)
    return out


@pytest.fixture
async def gateway(
    make_gateway: GatewayFactory, make_history: HistoryFactory, make_presence: PresenceFactory
) -> Gateway:
    await make_history(NAMESPACES)
    await make_presence()
    return await make_gateway(NAMESPACES, ping_interval=30)


async def both(gateway: Gateway, user: str, ttl: float = 3600) -> list[FormatClient]:
    return [await connected(gateway, fmt, user, ttl) for fmt in FORMATS]


async def test_publications_history_and_recovery_read_the_same_in_both_formats(gateway: Gateway) -> None:
    channel = "room:parity"
    subscribers = await both(gateway, "reader")
    publisher = await connected(gateway, Format.JSON, "writer")
    subscribed = [await c.command("subscribe", {"channel": channel}) for c in subscribers]
    assert subscribed[0] == subscribed[1]
    assert subscribed[0]["subscribe"]["recoverable"] is True
    for n in range(5):
        assert "publish" in await publisher.command("publish", {"channel": channel, "data": {"n": n}})
    pushes = [[await c.next_push() for _ in range(5)] for c in subscribers]
    assert pushes[0] == pushes[1]
    assert [p["push"]["pub"]["data"] for p in pushes[0]] == [{"n": n} for n in range(5)]

    # History: all of it, a page since a position, newest first.
    position = {"offset": pushes[0][1]["push"]["pub"]["offset"], "epoch": subscribed[0]["subscribe"]["epoch"]}
    for request in (
        {"channel": channel, "limit": -1},
        {"channel": channel, "limit": 2, "since": position},
        {"channel": channel, "limit": 3, "reverse": True},
    ):
        replies = [await c.command("history", request) for c in subscribers]
        assert replies[0] == replies[1], request
        assert replies[0]["history"]["publications"]

    # Recovery: both come back from the same position after missing three.
    for c in subscribers:
        await c.ws.close()
    for n in range(5, 8):
        await publisher.command("publish", {"channel": channel, "data": {"n": n}})
    again = await both(gateway, "reader")
    recover = {"channel": channel, "recover": True, **position}
    recovered = [await c.command("subscribe", recover) for c in again]
    assert recovered[0] == recovered[1]
    assert recovered[0]["subscribe"]["recovered"] is True
    assert [p["data"]["n"] for p in recovered[0]["subscribe"]["publications"]] == [2, 3, 4, 5, 6, 7]


async def test_error_codes_are_the_same_in_both_formats(gateway: Gateway) -> None:
    clients = await both(gateway, "erring")
    commands: list[tuple[str, dict[str, Any]]] = [
        ("subscribe", {"channel": "room:twice"}),
        ("subscribe", {"channel": "room:twice"}),  # 105 already subscribed
        ("subscribe", {"channel": "nowhere:x"}),  # 102 unknown channel
        ("publish", {"channel": "news:x", "data": {}}),  # 103 permission denied
        ("rpc", {"method": "nobody.home", "data": {}}),  # 108 not available
        ("history", {"channel": "room:twice", "limit": 1, "since": {"offset": 1, "epoch": "stale"}}),  # 112
        ("subscribe", {"channel": "$room:private", "token": token("erring", ttl=-60)}),
    ]
    transcripts = [[await c.command(m, b) for m, b in commands] for c in clients]
    assert transcripts[0] == transcripts[1]
    codes = [r["error"]["code"] for r in transcripts[0][1:] if "error" in r]
    assert codes[:5] == [105, 102, 103, 108, 112], transcripts[0]


async def test_join_and_leave_pushes_are_the_same_in_both_formats(gateway: Gateway) -> None:
    channel = "room:joins"
    watchers = await both(gateway, "watcher")
    for w in watchers:
        assert "subscribe" in await w.command("subscribe", {"channel": channel, "join_leave": True})
    visitor = await connected(gateway, Format.JSON, "visitor")
    assert "subscribe" in await visitor.command("subscribe", {"channel": channel})
    assert "unsubscribe" in await visitor.command("unsubscribe", {"channel": channel})

    async def visitors_pushes(watcher: FormatClient) -> list[dict[str, Any]]:
        """The visitor's join and leave (the watchers also see each other join)."""
        got: list[dict[str, Any]] = []
        while len(got) < 2:
            push = await watcher.next_push()
            kind = next(k for k in push["push"] if k != "channel")
            if push["push"][kind]["info"]["user"] == "visitor":
                got.append(push)
        return got

    seen = [await visitors_pushes(w) for w in watchers]
    assert seen[0] == seen[1]
    assert [next(k for k in p["push"] if k != "channel") for p in seen[0]] == ["join", "leave"]
    assert seen[0][0]["push"]["join"]["info"]["user"] == "visitor"


async def test_refresh_replies_are_the_same_in_both_formats(gateway: Gateway) -> None:
    ttl = token_ttl(30)
    clients = await both(gateway, "refresher", ttl=ttl)
    fresh = token("refresher", ttl=3600)
    replies = [without_client_ids(await c.command("refresh", {"token": fresh})) for c in clients]
    # ttl is counted down in whole seconds: the two may be a second apart.
    ttls = [r["refresh"].pop("ttl") for r in replies]
    assert replies[0] == replies[1]
    assert replies[0]["refresh"]["expires"] is True
    assert abs(ttls[0] - ttls[1]) <= 1
    assert all(3500 <= t <= 3600 for t in ttls)


async def test_disconnects_are_the_same_in_both_formats(gateway: Gateway, nats_url: str) -> None:
    # Told by the server (a backend's disconnect of the user) ...
    kicked = await both(gateway, "mallory")
    nc = await connect(nats_url, name="backend")
    await nc.publish(Subjects().control, Control(disconnect=DisconnectUser(user="mallory")).SerializeToString())
    await nc.flush()
    await nc.close()
    codes = [await c.close_code() for c in kicked]
    assert codes[0] == codes[1]
    assert codes[0][0] is not None
    assert 3000 <= codes[0][0] < 5000
    # ... and earned by the client: a command the protocol cannot parse.
    refused = await both(gateway, "sloppy")
    for c in refused:
        await c.ws.send(b"\xff\xfe not a command" if c.format is Format.PROTOBUF else "{not json")
    codes = [await c.close_code() for c in refused]
    assert codes[0] == codes[1] == (3501, "bad request")
