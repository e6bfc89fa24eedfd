"""The live path's gap fill, made to fire: a gateway's NATS link cut while publications go on.

The gateway reaches NATS only through a TCP balancer; the publisher (a
backend) and the history service connect directly. Cutting the balancer for
longer than a publication interval makes the gateway miss publications
while its clients stay connected; after it reconnects, the next publication
names a previous offset it never delivered. Every subscriber must then get
everything, in order and once, filled from history, or be told with an
unsubscribe 2500 - never a silent hole.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshcast.bus import connect, publish
from meshcast.devtools.tokens import connection_token
from meshcast.protocol import Format
from meshcast.testing import (
    NatsServer,
    ServiceProcess,
    gateway_process,
    history_process,
    metric_sum,
    within,
    ws_url,
)
from meshcast.testing.balancer import TcpBalancer
from meshcast.testing.raw import RawClient

from .conftest import NAMESPACES, SECRET

pytestmark = pytest.mark.e2e

CHANNEL = "chat:gap"


@dataclass
class Stack:
    nats: NatsServer
    link: TcpBalancer
    gateway: ServiceProcess


@pytest.fixture
async def stack(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Stack]:
    host, port = nats_server.url.removeprefix("nats://").rsplit(":", 1)
    link = await TcpBalancer([(host, int(port))]).start()
    history = history_process(tmp_path, [nats_server.url], namespaces_file=NAMESPACES).start(wait=30)
    gateway = gateway_process(tmp_path, [f"nats://127.0.0.1:{link.port}"], secret=SECRET, namespaces_file=NAMESPACES)
    # In a thread: the balancer it connects through runs in this loop.
    await asyncio.to_thread(gateway.start)
    try:
        yield Stack(nats_server, link, gateway)
    finally:
        await asyncio.to_thread(gateway.terminate)
        history.terminate()
        await link.stop()


def gaps_found(gateway: ServiceProcess) -> float:
    return metric_sum(gateway, "meshcast_gateway_gaps_total")


async def test_a_cut_nats_link_is_filled_from_history_or_told(stack: Stack) -> None:
    url = ws_url(stack.gateway)
    subscribers: list[tuple[RawClient, int]] = []
    for k in range(6):
        client = await RawClient.open(url, Format.PROTOBUF if k % 2 else Format.JSON)
        assert "connect" in await client.command("connect", {"token": connection_token(SECRET, f"sub{k}")})
        result = await client.subscribe(CHANNEL)
        subscribers.append((client, int(result.get("offset", 0))))

    backend = await connect(stack.nats.url, name="publisher")
    acked: list[int] = []

    async def publish_some(count: int) -> None:
        for i in range(count):
            body = json.dumps({"n": len(acked) + i}).encode()
            acked.append(await publish(backend, CHANNEL, body, history=True))
            await asyncio.sleep(0.02)

    try:
        await publish_some(10)
        await stack.link.cut()
        await publish_some(25)  # about half a second the gateway never sees
        stack.link.heal()
        # The gateway reconnects; these name offsets it never delivered.
        await publish_some(25)
    finally:
        await backend.close()

    async def settled(client: RawClient) -> None:
        got = client.channels[CHANNEL]
        while not got.unsubscribed and got.offsets[-1:] != acked[-1:]:
            client.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.changed.wait(), 1)

    for client, position in subscribers:
        await within(settled(client), 20)
        got = client.channels[CHANNEL]
        if got.unsubscribed:
            assert got.unsubscribed[0]["code"] == 2500, got.unsubscribed
            assert got.offsets == acked[: len(got.offsets)] or got.offsets == sorted(set(got.offsets))
            continue
        assert got.offsets == [o for o in acked if o > position], "a subscriber was left with a hole"
    assert gaps_found(stack.gateway) >= 1, "the gap path never fired: the test proved nothing"
    for client, _ in subscribers:
        await client.close()
