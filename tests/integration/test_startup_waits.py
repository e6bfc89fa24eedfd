"""Services started before JetStream has a quorum wait for it, not-ready, instead of exiting.

A 3-node cluster with two nodes down has no JetStream quorum: stream and KV
bucket creation answer nothing, or "no suitable peers for placement". The
history service stays alive (/health 200) and not ready (/ready 503) until the
nodes come back, then creates its streams and serves; the auth service issues
tokens meanwhile and makes its revocation bucket once it can; presence runs
without its lease bucket and picks it up once JetStream answers.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from typing import Any

import pytest

from meshcast.testing import NatsCluster, timeout, wait_until_async, within

from .harness import AuthFactory, HistoryFactory, PresenceFactory

NAMESPACES = "namespaces:\n  - name: room\n    history_size: 10\n    history_ttl: 60\n"


def status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout(2)) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def nats_url(nats_cluster: NatsCluster) -> str:
    """The services' NATS (the factories'): node 1 only, the node the test keeps running."""
    return nats_cluster.nodes[0].url


async def test_services_wait_for_a_jetstream_quorum_and_then_serve(
    nats_cluster: NatsCluster, make_history: HistoryFactory, make_auth: AuthFactory, make_presence: PresenceFactory
) -> None:
    others = nats_cluster.nodes[1:]
    for node in others:
        node.stop()
    # Short NATS requests: several attempts at the streams and buckets within the wait below.
    common: dict[str, Any] = {"nats_timeout": timeout(1.0)}
    history = await make_history(NAMESPACES, start=False, history_replicas=3, **common)
    starting = asyncio.create_task(history.start())
    try:
        auth = await within(make_auth(revocation_replicas=3, **common), 15)
        presence = await within(make_presence(lease_replicas=3, startup_sync_wait=timeout(0.1), **common), 15)
        await wait_until_async(lambda: history.health_port != 0, 10, "history's health server")
        # Several attempts later: still there, alive, not ready.
        await asyncio.sleep(timeout(3))
        assert not starting.done(), starting
        assert await asyncio.to_thread(status, history.health_port, "/health") == 200
        assert await asyncio.to_thread(status, history.health_port, "/ready") == 503
        assert auth.ready()
        assert presence.ready()

        for node in others:
            await asyncio.to_thread(node.start)
        await within(starting, 60)
        assert history.ready()
        assert await asyncio.to_thread(status, history.health_port, "/ready") == 200
        await wait_until_async(auth.revocations_ready, 60, "the revocation bucket")
        await wait_until_async(presence.leases_ready, 60, "the lease bucket")
    finally:
        if not starting.done():
            starting.cancel()
