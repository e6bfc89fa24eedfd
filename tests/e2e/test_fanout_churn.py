"""A closing socket costs no other subscriber a publication (issue 19's first defect).

One gateway (uvloop, as in production), one history channel, a publisher at
about 200 acknowledged publications a second. A reference subscriber joins
first; then, over and over, victims subscribe, an observer subscribes after
them, and the victims close (politely or abruptly) while publications flow.
Every observer must receive every publication after its subscribe position,
in order and once, or be told (it never is here: no fault is injected).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshcast.devtools.tokens import connection_token
from meshcast.protocol import Format
from meshcast.testing import NatsServer, ServiceProcess, gateway_process, history_process, within, ws_url
from meshcast.testing.raw import RawClient

from .conftest import NAMESPACES, SECRET

pytestmark = pytest.mark.e2e

CHANNEL = "chat:churn"


@pytest.fixture
def one_gateway(nats_server: NatsServer, tmp_path: Path) -> Iterator[ServiceProcess]:
    history = history_process(tmp_path, [nats_server.url], namespaces_file=NAMESPACES).start(wait=30)
    gateway = gateway_process(tmp_path, [nats_server.url], secret=SECRET, namespaces_file=NAMESPACES).start()
    try:
        yield gateway
    finally:
        gateway.terminate()
        history.terminate()


async def _client(url: str, user: str, fmt: Format) -> RawClient:
    client = await RawClient.open(url, fmt)
    reply = await client.command("connect", {"token": connection_token(SECRET, user)})
    assert "connect" in reply, reply
    return client


async def _publish_until(publisher: RawClient, stop: asyncio.Event, acked: list[int]) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        reply = await publisher.command("publish", {"channel": CHANNEL, "data": {"n": n}})
        assert "publish" in reply, reply
        acked.append(n)
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("fmt", [Format.JSON, Format.PROTOBUF], ids=["json", "protobuf"])
async def test_closing_sockets_cost_other_subscribers_nothing(one_gateway: ServiceProcess, fmt: Format) -> None:
    url = ws_url(one_gateway)
    publisher = await _client(url, "publisher", Format.JSON)
    reference = await _client(url, "reference", fmt)
    await reference.subscribe(CHANNEL)
    stop = asyncio.Event()
    acked: list[int] = []
    publishing = asyncio.create_task(_publish_until(publisher, stop, acked))

    observers: list[tuple[RawClient, int]] = []
    try:
        for i in range(40):
            victims = [await _client(url, f"victim{i}-{k}", fmt) for k in range(3)]
            for victim in victims:
                await victim.subscribe(CHANNEL, join_leave=True)
            observer = await _client(url, f"observer{i}", fmt)
            result = await observer.subscribe(CHANNEL, join_leave=True)
            observers.append((observer, int(result.get("offset", 0))))
            # Polite and abrupt closes, one after another, while the publisher runs.
            await asyncio.gather(*(v.close() if (i + k) % 2 else v.abort() for k, v in enumerate(victims)))
    finally:
        stop.set()
        await within(publishing, 10)

    expected = reference.channels[CHANNEL]

    async def caught_up(client: RawClient) -> None:
        got = client.channels[CHANNEL]
        while len(got.offsets) < len(acked) if client is reference else got.offsets[-1:] != expected.offsets[-1:]:
            client.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.changed.wait(), 1)

    await within(caught_up(reference), 10)
    assert len(expected.offsets) == len(acked), "the reference missed publications"
    assert expected.offsets == sorted(set(expected.offsets))
    for observer, position in observers:
        with contextlib.suppress(TimeoutError):
            await within(caught_up(observer), 10)
        got = observer.channels[CHANNEL]
        assert got.unsubscribed == []
        assert got.offsets == [o for o in expected.offsets if o > position], f"observer from {position} lost some"
    logs = one_gateway.logs()
    assert "Exception in callback" not in logs
    assert "Cannot call write()" not in logs
