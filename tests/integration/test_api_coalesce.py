"""The server API's coalesced live publishes, against a real nats-server: order, batching, refusals."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, MaxPayloadError

from meshcast.api.coalesce import Coalescer
from meshcast.testing import timeout


async def _collect(nc: Nats, subject: str, count: int) -> tuple[list[bytes], asyncio.Future[None]]:
    got: list[bytes] = []
    done = asyncio.get_running_loop().create_future()

    async def on(msg: Msg) -> None:
        got.append(msg.data)
        if len(got) == count and not done.done():
            done.set_result(None)

    await nc.subscribe(subject, cb=on)
    await nc.flush()
    return got, done


async def test_publishes_within_the_linger_arrive_in_order(nats_url: str) -> None:
    publisher, reader = await nats.connect(nats_url), await nats.connect(nats_url)
    try:
        got, done = await _collect(reader, "live.>", 300)
        coalescer = Coalescer(publisher, linger=0.002, max_batch=64)
        for i in range(300):  # more than one batch: full batches go at once, the rest after the linger
            await coalescer.publish(f"live.{i % 3}", b"%d" % i, None)
        await asyncio.wait_for(done, timeout(5))
        assert got == [b"%d" % i for i in range(300)]
    finally:
        await publisher.close()
        await reader.close()


async def test_drain_hands_over_before_a_later_direct_publish(nats_url: str) -> None:
    """What a control command relies on: publishes answered before it reach NATS before it."""
    publisher, reader = await nats.connect(nats_url), await nats.connect(nats_url)
    try:
        got, done = await _collect(reader, "ordered", 3)
        coalescer = Coalescer(publisher, linger=10.0)  # only a drain can send them
        await coalescer.publish("ordered", b"pub-1", None)
        await coalescer.publish("ordered", b"pub-2", None)
        await coalescer.drain()
        await publisher.publish("ordered", b"control")
        await asyncio.wait_for(done, timeout(5))
        assert got == [b"pub-1", b"pub-2", b"control"]
    finally:
        await publisher.close()
        await reader.close()


async def test_what_nats_would_refuse_is_refused_at_once(nats_url: str) -> None:
    publisher = await nats.connect(nats_url)
    coalescer = Coalescer(publisher, linger=0.01)
    with pytest.raises(MaxPayloadError):
        await coalescer.publish("big", b"x" * (publisher.max_payload + 1), None)
    await publisher.close()
    with pytest.raises(ConnectionClosedError):
        await coalescer.publish("closed", b"x", None)
