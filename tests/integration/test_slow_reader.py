"""A subscriber that stops reading is disconnected with 3008 (slow), and costs
the other subscribers of its channel nothing.

The slow reader is real: a socket with a small receive buffer whose client
stops reading, so TCP pushes back until the gateway's write buffer for it
passes `write_buffer_limit`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket

import websockets

from meshcast.bus import connect, publish
from meshcast.gateway.app import Gateway
from meshcast.protocol import DisconnectCode
from meshcast.testing import timeout, within

from .harness import GatewayFactory, connected_client, token, url

PUBLICATIONS = 300
PAYLOAD = json.dumps({"blob": "x" * 16_000}).encode()


async def stalled_subscriber(gateway: Gateway, channel: str) -> websockets.ClientConnection:
    """A connected subscriber of `channel` that reads no more after the subscribe reply."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gateway.port))
    # max_queue=1: past one queued frame the library stops reading the socket.
    ws = await websockets.connect(url(gateway), sock=sock, max_queue=1, open_timeout=timeout(5))
    await ws.send(json.dumps({"id": 1, "connect": {"token": token("slow")}}))
    assert "connect" in json.loads(await within(ws.recv()))
    await ws.send(json.dumps({"id": 2, "subscribe": {"channel": channel}}))
    assert "subscribe" in json.loads(await within(ws.recv()))
    return ws


async def test_a_subscriber_that_stops_reading_is_closed_with_3008_and_others_get_everything(
    make_gateway: GatewayFactory, nats_url: str
) -> None:
    # A close handshake long enough for the slow reader to drain its backlog and read the code.
    gateway = await make_gateway(write_buffer_limit=64 * 1024, close_timeout=timeout(60))
    channel = "chat:firehose"
    slow = await stalled_subscriber(gateway, channel)
    fast = await connected_client(gateway, "fast")
    assert "subscribe" in await fast.command("subscribe", {"channel": channel})

    received = 0

    async def read_fast() -> None:
        nonlocal received
        while received < PUBLICATIONS:
            push = await fast.next_push(seconds=10)
            assert push["push"]["channel"] == channel
            received += 1

    reader = asyncio.create_task(read_fast())
    nc = await connect(nats_url, name="firehose")
    try:
        for _ in range(PUBLICATIONS):
            await publish(nc, channel, PAYLOAD)
        await nc.flush()
        await within(reader, 60)
    finally:
        reader.cancel()
        await nc.close()
    assert received == PUBLICATIONS

    # The gateway has given up on the slow one; reading now drains what was queued
    # before the close frame, then the close frame itself.
    got = 0

    async def drain() -> None:
        nonlocal got
        with contextlib.suppress(websockets.ConnectionClosed):
            async for _ in slow:
                got += 1

    await within(drain(), 30)
    assert slow.close_code == DisconnectCode.SLOW, (slow.close_code, slow.close_reason)
    assert got < PUBLICATIONS + 2, "a disconnected reader got every publication: it was never slow"
    assert fast.ws.close_code is None
