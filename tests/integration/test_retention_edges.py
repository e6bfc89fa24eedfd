"""The edges of what the history keeps: the idempotency window (a retry inside it
is stored once, one after it is a new publication) and the history TTL (a
publication lives for it, then recovery past it says not recovered)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client as Nats

from meshcast.bus import connect, publish
from meshcast.gateway.app import Gateway
from meshcast.testing import timeout, wait_until_async, within

from .harness import GatewayFactory, HistoryFactory, connected_client

WINDOW = timeout(2)  # the history service's duplicate window
TTL = timeout(3)  # the `brief` namespace's history TTL

NAMESPACES = f"""
namespaces:
  - name: room
    history_size: 100
    history_ttl: 300
    recovery: true
    allow_publish: true
  - name: brief
    history_size: 100
    history_ttl: {TTL}
    recovery: true
    allow_publish: true
"""


@pytest.fixture
async def gateway(make_gateway: GatewayFactory, make_history: HistoryFactory) -> Gateway:
    await make_history(NAMESPACES, duplicate_window=WINDOW)
    return await make_gateway(NAMESPACES)


@pytest.fixture
async def backend(nats_url: str) -> AsyncIterator[Nats]:
    nc = await connect(nats_url, name="backend")
    yield nc
    await nc.close()


async def history_of(gateway: Gateway, channel: str) -> list[dict[str, Any]]:
    reader = await connected_client(gateway, "reader")
    reply = await reader.command("history", {"channel": channel, "limit": -1})
    await reader.ws.close()
    publications: list[dict[str, Any]] = reply["history"].get("publications", [])
    return publications


async def test_a_retry_inside_the_idempotency_window_is_stored_once_and_one_after_it_again(
    gateway: Gateway, backend: Nats
) -> None:
    channel = "room:window"
    started = time.monotonic()
    first = await publish(backend, channel, b'{"n":1}', history=True, idempotency_key="k")
    # Retry with the same key until the store takes it as new: never inside the
    # window, and not long after it.
    answers: list[tuple[float, int]] = []

    async def until_stored_again() -> None:
        while True:
            offset = await publish(backend, channel, b'{"n":1}', history=True, idempotency_key="k")
            answers.append((time.monotonic() - started, offset))
            if offset != first:
                return
            await asyncio.sleep(0.1)

    await within(until_stored_again(), 2 + 10)
    inside = [offset for elapsed, offset in answers if elapsed < WINDOW]
    assert inside, "no retry fell inside the window: the test proved nothing about it"
    assert set(inside) == {first}, "a retry inside the duplicate window was stored again"
    elapsed, second = answers[-1]
    assert elapsed >= WINDOW
    assert second > first
    assert [p["data"] for p in await history_of(gateway, channel)] == [{"n": 1}, {"n": 1}]


async def test_a_publication_lives_for_the_history_ttl_then_recovery_past_it_is_not_recovered(
    gateway: Gateway, backend: Nats
) -> None:
    channel = "brief:ttl"
    bob = await connected_client(gateway, "bob")
    position = (await bob.command("subscribe", {"channel": channel}))["subscribe"]
    stored_at = time.monotonic()
    await publish(backend, channel, b'{"n":1}', history=True)
    kept = await history_of(gateway, channel)
    if time.monotonic() - stored_at < TTL:  # still inside the TTL when read
        assert [p["data"] for p in kept] == [{"n": 1}]
    await bob.ws.close()

    async def expired() -> bool:
        return not await history_of(gateway, channel)

    await wait_until_async(expired, 3 + 10, "the publication to expire", every=0.2)
    assert time.monotonic() - stored_at >= TTL, "expired before its TTL"

    again = await connected_client(gateway, "bob")
    recover = {"channel": channel, "recover": True, "epoch": position["epoch"], "offset": position.get("offset", 0)}
    result = (await again.command("subscribe", recover))["subscribe"]
    assert result.get("recovered", False) is False
    assert "publications" not in result
    # The stream lives on: what is published now is kept again.
    await publish(backend, channel, b'{"n":2}', history=True)
    assert [p["data"] for p in await history_of(gateway, channel)] == [{"n": 2}]
