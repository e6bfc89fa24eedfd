"""Property: clients that die during random flushes never cost a survivor a publication.

A real hub on a real nats-server, clients on real loopback TCP transports.
Publications flow on a plain channel and a history channel (with the stream
offsets JetStream's RePublish would carry); victims die at random moments,
some from inside a NATS callback so that the death lands between a
message's arrival and its flush, in every way a socket dies: half-closed as
websockets does after a close handshake, closed, aborted, or dropped by the
peer. The connection task's cleanup comes later, as it does in the gateway.
Every survivor must receive every publication after its join position, in
order and once.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import nats
import pytest
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg

from meshcast.bus import Subjects
from meshcast.gateway import metrics
from meshcast.gateway.client import Client
from meshcast.gateway.hub import Hub
from meshcast.proto.bus_pb2 import Publication
from meshcast.protocol import Disconnect, Format, ServerSession
from meshcast.testing import wait_until_async, within
from meshcast.testing.raw import replies

PLAIN, HISTORY = "chat:plain", "chat:history"
DEATHS = ("eof", "close", "abort", "peer")


def _frames(buffer: bytearray) -> list[bytes]:
    """Whole server frames (unmasked) taken off the front of `buffer`."""
    out = []
    while len(buffer) >= 2:
        size, start = buffer[1] & 0x7F, 2
        if size == 126:
            size, start = int.from_bytes(buffer[2:4], "big"), 4
        elif size == 127:
            size, start = int.from_bytes(buffer[2:10], "big"), 10
        if len(buffer) < start + size:
            break
        out.append(bytes(buffer[start : start + size]))
        del buffer[: start + size]
    return out


class _ServerSide(asyncio.Protocol):
    def __init__(self, made: asyncio.Queue[asyncio.Transport]) -> None:
        self._made = made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._made.put_nowait(transport)


@dataclass(eq=False)
class Peer:
    """One client: the hub's `Client` on the server transport, and what its socket received."""

    client: Client
    transport: asyncio.Transport
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    open: list[bool] = field(default_factory=lambda: [True])
    got: dict[str, list[int]] = field(default_factory=lambda: {PLAIN: [], HISTORY: []})
    task: asyncio.Task[None] | None = None

    async def read(self) -> None:
        buffer = bytearray()
        while chunk := await self.reader.read(65536):
            buffer.extend(chunk)
            for payload in _frames(buffer):
                for reply in replies(self.client.format, payload if self.client.format.binary else payload.decode()):
                    push = reply.get("push", {})
                    if "pub" in push:
                        pub = push["pub"]
                        self.got[push["channel"]].append(int(pub.get("offset", 0)) or _n(pub, self.client.format))

    def die(self, how: str) -> None:
        if not self.open[0]:
            return
        self.open[0] = False
        if how == "eof":
            self.transport.write_eof()
        elif how == "close":
            self.transport.close()
        elif how == "abort":
            self.transport.abort()
        else:
            self.writer.close()


def _n(pub: dict[str, Any], fmt: Format) -> int:
    """A plain channel's publication number (it has no offset): its data's `n`."""
    data = json.loads(base64.b64decode(pub["data"])) if fmt.binary else pub["data"]
    return int(data["n"])


def _held(hub: Hub) -> int:
    """How many arrivals the history channel's sequencer holds (white-box: no public view)."""
    entry = hub._channels.get(HISTORY)
    return len(entry.sequencer.held_until(1 << 62)) if entry is not None and entry.sequencer else 0


def _skipped() -> float:
    """Writes the hub's clients skipped so far (every reason)."""
    return sum(s.value for m in metrics.WRITES_SKIPPED.collect() for s in m.samples if s.name.endswith("_total"))


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Nats]:
    conn = await nats.connect(nats_url)
    yield conn
    await conn.close()


async def _peer(server: asyncio.Server, made: asyncio.Queue[asyncio.Transport], n: int, fmt: Format) -> Peer:
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    transport = await within(made.get())

    def on_close(client: Client, disconnect: Disconnect) -> None:
        transport.close()

    client = Client(f"c{n}", ServerSession(fmt), transport, buffer_limit=1 << 24, on_close=on_close)
    client.user = f"u{n}"
    peer = Peer(client, transport, reader, writer)
    peer.task = asyncio.create_task(peer.read())
    return peer


@pytest.mark.parametrize("seed", range(6))
async def test_survivors_get_everything_while_random_clients_die(nc: Nats, seed: int) -> None:
    rng = random.Random(seed)
    subjects = Subjects()
    hub = Hub(nc, subjects)
    made: asyncio.Queue[asyncio.Transport] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _ServerSide(made), "127.0.0.1", 0)
    skipped_before = sum(
        s.value for m in metrics.WRITES_SKIPPED.collect() for s in m.samples if s.name.endswith("_total")
    )

    peers: list[Peer] = []
    positions: dict[Peer, int] = {}
    published = 0
    epoch = f"epoch-{seed}"

    async def add(fmt: Format) -> Peer:
        peer = await _peer(server, made, len(peers), fmt)
        hub.add_client(peer.client)
        await hub.subscribe(PLAIN, peer.client)
        joiner = await hub.join(HISTORY, peer.client)
        positions[peer] = published
        hub.activate(HISTORY, joiner, position=published, channel_offset=published, epoch=epoch)
        peers.append(peer)
        return peer

    victims: list[Peer] = []

    def kill_one() -> None:
        alive = [v for v in victims if v.open[0]]
        if alive:
            victim = rng.choice(alive)
            victim.die(rng.choice(DEATHS))
            # The connection task notices and cleans up a moment later.
            loop.call_later(rng.uniform(0, 0.02), lambda: asyncio.ensure_future(hub.remove_client(victim.client)))

    # A callback on the same subjects: a death lands between arrival and flush.
    async def on_bus(msg: Msg) -> None:
        if rng.random() < 0.3:
            loop.call_soon(kill_one)

    side = [await nc.subscribe(subjects.live(ch), cb=on_bus) for ch in (PLAIN, HISTORY)]
    for k in range(8):
        await add(Format.JSON if k % 2 else Format.PROTOBUF)
    await nc.flush()

    for _ in range(30):
        for _ in range(rng.randint(1, 8)):
            published += 1
            headers = {"Nats-Sequence": str(published), "Nats-Last-Sequence": str(published - 1)}
            data = Publication(data=f'{{"n": {published}}}'.encode()).SerializeToString()
            await nc.publish(subjects.live(HISTORY), data, headers=headers)
            await nc.publish(subjects.live(PLAIN), data)
        await nc.flush()
        if rng.random() < 0.7:
            victims.append(await add(Format.JSON if rng.random() < 0.5 else Format.PROTOBUF))
        await asyncio.sleep(rng.uniform(0, 0.01))
    for sub in side:
        await sub.unsubscribe()

    survivors = [p for p in peers if p.open[0]]
    assert len(survivors) >= 8

    def complete() -> bool:
        return all(
            positions[p] == published or (p.got[HISTORY][-1:] == [published] and p.got[PLAIN][-1:] == [published])
            for p in survivors
        )

    await wait_until_async(complete, 10, "every survivor to receive the last publication")
    for peer in survivors:
        position = positions[peer]
        assert peer.got[HISTORY] == list(range(position + 1, published + 1)), f"history survivor from {position}"
        plain = peer.got[PLAIN]
        assert plain == sorted(set(plain)), "plain survivor got duplicates or disorder"
        assert [n for n in plain if n > position] == list(range(position + 1, published + 1)), f"plain from {position}"
    assert _skipped() > skipped_before, "no write hit a dying socket: the test proved nothing"

    for peer in peers:
        peer.writer.close()
        if peer.task is not None:
            peer.task.cancel()
        await hub.remove_client(peer.client)
    server.close()


async def test_a_joiner_whose_read_stopped_earlier_gets_what_the_first_position_passed_over(nc: Nats) -> None:
    """Two joiners on a channel new to this gateway; the one whose history read went
    further activates first and sets the channel's position. The other (its read stopped
    earlier) must still get the publications in between, from the live path."""
    subjects = Subjects()
    hub = Hub(nc, subjects)
    made: asyncio.Queue[asyncio.Transport] = asyncio.Queue()
    server = await asyncio.get_running_loop().create_server(lambda: _ServerSide(made), "127.0.0.1", 0)
    ahead = await _peer(server, made, 0, Format.JSON)
    behind = await _peer(server, made, 1, Format.JSON)
    try:
        for peer in (ahead, behind):
            hub.add_client(peer.client)
        joiners = [await hub.join(HISTORY, peer.client) for peer in (ahead, behind)]
        for seq in range(1, 7):
            headers = {"Nats-Sequence": str(seq), "Nats-Last-Sequence": str(seq - 1)}
            await nc.publish(subjects.live(HISTORY), Publication(data=b"{}").SerializeToString(), headers=headers)
        await nc.flush()
        # The hub holds the arrivals (no position yet) once its subscription has them.
        await wait_until_async(lambda: _held(hub) == 6, 5, "the six arrivals to be held")
        hub.activate(HISTORY, joiners[0], position=5, channel_offset=5, epoch="e")
        hub.activate(HISTORY, joiners[1], position=2, channel_offset=2, epoch="e")

        def complete() -> bool:
            return ahead.got[HISTORY][-1:] == [6] and behind.got[HISTORY][-1:] == [6]

        await wait_until_async(complete, 5, "both joiners to reach offset 6")
        assert ahead.got[HISTORY] == [6]
        assert behind.got[HISTORY] == [3, 4, 5, 6]
    finally:
        for peer in (ahead, behind):
            peer.writer.close()
            if peer.task is not None:
                peer.task.cancel()
            await hub.remove_client(peer.client)
        server.close()
