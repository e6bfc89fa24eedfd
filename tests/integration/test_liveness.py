"""The liveness rule against a real nats-server: a connection closed for good
fails /health, a reconnecting one does not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as Nats

from meshcast.bus import connect
from meshcast.common.health import HealthServer, Liveness, activated, alive
from meshcast.testing import NatsServer, wait_until_async, within

from ..natslimits import reload_with


async def _get(port: int, path: str) -> int:
    """The status code of a plain HTTP GET (the health server closes after one answer)."""
    reader, writer = await within(asyncio.open_connection("127.0.0.1", port))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    status = await within(reader.readline())
    writer.close()
    return int(status.split()[1])


@pytest.fixture
async def watched(nats_server: NatsServer) -> AsyncIterator[tuple[Nats, Liveness, HealthServer]]:
    nc = await connect(nats_server.url, name="liveness-test", reconnect_time_wait=0.1)
    liveness = Liveness()
    liveness.watch("liveness-test", nc)
    health = HealthServer("127.0.0.1", 0, ready=lambda: nc.is_connected)
    with activated(liveness):
        await health.start()
        try:
            yield nc, liveness, health
        finally:
            await health.stop()
            await nc.close()


async def test_a_connection_closed_by_the_server_fails_health(
    nats_server: NatsServer, watched: tuple[Nats, Liveness, HealthServer]
) -> None:
    nc, liveness, health = watched
    assert await _get(health.port, "/health") == 200
    reload_with(nats_server, "max_payload: 16")
    await nc.publish("liveness.test", b"x" * 100)  # the server answers -ERR and hangs up
    reason = await within(liveness.wait_dead())
    assert nc.is_closed
    assert "maximum payload violation" in reason
    assert not alive()
    assert await _get(health.port, "/health") == 503
    assert await _get(health.port, "/ready") == 503


async def test_a_reconnecting_connection_stays_alive(
    watched: tuple[Nats, Liveness, HealthServer], nats_server: NatsServer
) -> None:
    nc, liveness, health = watched
    nats_server.stop()
    await wait_until_async(lambda: not nc.is_connected, what="the client to notice the server is gone")
    assert nc.is_reconnecting
    assert liveness.failure() is None
    assert await _get(health.port, "/health") == 200
    assert await _get(health.port, "/ready") == 503


async def test_a_close_on_purpose_is_no_failure(watched: tuple[Nats, Liveness, HealthServer]) -> None:
    nc, liveness, health = watched
    liveness.stopping()
    await nc.close()
    assert liveness.failure() is None
    assert await _get(health.port, "/health") == 200


def test_without_a_running_service_everything_is_alive() -> None:
    assert alive()
