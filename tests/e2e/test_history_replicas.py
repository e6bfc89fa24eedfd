"""Two history service processes share the reads (one NATS queue group), and
when one is SIGKILLed the other serves every read: no read fails or hangs."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshcast.devtools.tokens import connection_token
from meshcast.testing import NatsServer, ServiceProcess, gateway_process, history_process, metric_sum, running, ws_url
from meshcast.testing.raw import RawClient

from .conftest import NAMESPACES, SECRET

pytestmark = pytest.mark.e2e

CHANNEL = "chat:replicas"


def served(history: ServiceProcess) -> float:
    return metric_sum(history, "meshcast_history_requests_total", port="_HEALTH_PORT", endpoint="history")


async def read_history(client: RawClient) -> list[int]:
    reply = await client.command("history", {"channel": CHANNEL, "limit": -1}, seconds=20)
    assert "history" in reply, reply
    return [int(p["data"]["n"]) for p in reply["history"].get("publications", [])]


async def test_two_history_instances_both_serve_and_one_may_die(tmp_path: Path, nats_server: NatsServer) -> None:
    first, second = (
        history_process(tmp_path, [nats_server.url], namespaces_file=NAMESPACES, name=name)
        for name in ("history-a", "history-b")
    )
    gateway = gateway_process(tmp_path, [nats_server.url], secret=SECRET, namespaces_file=NAMESPACES)
    with running(first, second, gateway):
        client = await RawClient.open(ws_url(gateway))
        try:
            assert "connect" in await client.command("connect", {"token": connection_token(SECRET, "alice")})
            for n in range(3):
                assert "publish" in await client.command("publish", {"channel": CHANNEL, "data": {"n": n}})

            # NATS spreads a queue group's requests at random: both serve within 200 reads.
            reads = 0
            while not (served(first) and served(second)):
                assert reads < 200, f"one instance served all {reads} reads"
                assert await read_history(client) == [0, 1, 2]
                reads += 1

            first.kill()  # SIGKILL: no goodbye, the server drops its subscriptions
            before = served(second)
            for _ in range(20):
                assert await read_history(client) == [0, 1, 2]
            assert served(second) - before >= 20
        finally:
            await client.close()
