"""The server API's scatter-gather (`info`, `channels`) over two real gateways.

A replica that has not listened a whole `gateway_timeout` cannot know every
gateway: it waits out the window rather than end once the gateways it heard so
far answered (the race CI caught: `info` named one gateway of two). Once it
knows them all (from heartbeats or `channels` answers) it ends as soon as all
answered."""

from __future__ import annotations

import asyncio
import time

import nats

from meshcast.api.bus import Bus
from meshcast.bus import Subjects
from meshcast.testing import timeout, within

from .harness import GatewayFactory

WINDOW = 2.0
GATEWAY_TIMEOUT = 2.5


async def test_a_fresh_replica_waits_for_every_gateway_then_ends_early(
    nats_url: str, make_gateway: GatewayFactory
) -> None:
    # One gateway beats often; the other beats once, at start, before the API listens.
    await make_gateway(presence_heartbeat_interval=0.2)
    await make_gateway(presence_heartbeat_interval=60.0)
    subjects = Subjects()
    nc = await nats.connect(nats_url)
    try:
        bus = Bus(nc, subjects, timeout=5.0, scatter_wait=WINDOW, gateway_timeout=GATEWAY_TIMEOUT)
        beats = await nc.subscribe(subjects.presence_heartbeat)
        await bus.watch_gateways()
        listening = time.monotonic()
        await beats.next_msg(timeout=timeout(5))  # the API heard one gateway of the two

        started = time.monotonic()
        nodes = await within(bus.nodes(), WINDOW + 5)
        assert time.monotonic() - started >= WINDOW * 0.9
        uids = {n.uid for n in nodes}
        assert len(uids) == 2
        started = time.monotonic()
        counts = await within(bus.channels(""), WINDOW + 5)
        assert time.monotonic() - started >= WINDOW * 0.9
        assert counts == {}

        # Listened a whole gateway_timeout, and heard both within it (one by its
        # heartbeats, one by its `channels` answer): done early.
        wait = GATEWAY_TIMEOUT - (time.monotonic() - listening) + 0.1
        if wait > 0:
            await within(asyncio.sleep(wait), wait + 1)
        assert bus.live_gateways() == uids
        started = time.monotonic()
        nodes = await within(bus.nodes(), WINDOW + 5)
        assert time.monotonic() - started < WINDOW / 2
        assert {n.uid for n in nodes} == uids
    finally:
        await nc.close()
