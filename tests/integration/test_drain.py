"""A draining gateway closes many real WebSocket clients spread over its window (gateway/drain.py)."""

from __future__ import annotations

import asyncio

from meshcast.gateway.app import Gateway
from meshcast.testing import timeout

from .harness import GatewayFactory, JsonClient, connected_client

# Above drain_seconds x 1000, where the old per-client pause fell under 1 ms and was skipped:
# every client closed in one loop.
CLIENTS = 1500
WINDOW = 1.0


async def _connect_many(gateway: Gateway, count: int) -> list[JsonClient]:
    clients: list[JsonClient] = []
    while len(clients) < count:
        batch = min(100, count - len(clients))
        clients.extend(await asyncio.gather(*(connected_client(gateway) for _ in range(batch))))
    return clients


async def test_drain_spreads_many_clients_over_the_window(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(drain_seconds=WINDOW, drain_tick=0.05, close_timeout=timeout(5))
    clients = await _connect_many(gateway, CLIENTS)
    loop = asyncio.get_running_loop()
    closed_at: list[float] = []
    codes: list[int | None] = []

    async def watch(client: JsonClient) -> None:
        await client.ws.wait_closed()
        closed_at.append(loop.time())
        codes.append(client.ws.close_code)

    watchers = [asyncio.create_task(watch(c)) for c in clients]
    start = loop.time()
    await gateway.drain()
    await asyncio.wait_for(asyncio.gather(*watchers), timeout(10))
    assert codes == [3001] * CLIENTS
    offsets = sorted(at - start for at in closed_at)
    # Spread over the window, not closed in one go (the old code closed all 1,500 within 17 ms).
    # The bounds leave room for a starved machine: a late tick closes a bigger batch, and
    # the clients here share the gateway's event loop. How even the pacing is, is measured
    # in tests/unit/test_drain.py on a virtual clock.
    assert offsets[-1] - offsets[0] >= WINDOW * 0.5, (offsets[0], offsets[-1])
    tenth = WINDOW / 10
    buckets = [sum(1 for at in offsets if i * tenth <= at < (i + 1) * tenth) for i in range(10)]
    assert max(buckets) <= CLIENTS * 0.35, buckets
    assert sum(1 for at in offsets if at < WINDOW / 2) <= CLIENTS * 0.75, buckets
