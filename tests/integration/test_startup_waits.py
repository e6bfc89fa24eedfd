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
from pathlib import Path
from typing import Any

from meshcast.auth.app import AuthApp
from meshcast.auth.settings import AuthSettings
from meshcast.history.app import HistoryApp
from meshcast.history.settings import HistorySettings
from meshcast.presence.app import PresenceApp
from meshcast.presence.settings import PresenceSettings
from meshcast.testing import NatsCluster, timeout, wait_until_async, within

from .harness import SECRET

NAMESPACES = "namespaces:\n  - name: room\n    history_size: 10\n    history_ttl: 60\n"


def status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout(2)) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_services_wait_for_a_jetstream_quorum_and_then_serve(nats_cluster: NatsCluster, tmp_path: Path) -> None:
    first, *others = nats_cluster.nodes
    for node in others:
        node.stop()
    path = tmp_path / "ns.yaml"
    path.write_text(NAMESPACES)
    common: dict[str, Any] = {"nats_url": first.url, "nats_timeout": 1.0, "health_host": "127.0.0.1", "health_port": 0}
    history = HistoryApp(HistorySettings(**common, namespaces_file=path, history_replicas=3))
    auth = AuthApp(
        AuthSettings(**common, grpc_host="127.0.0.1", grpc_port=0, token_hmac_secret=SECRET, revocation_replicas=3)
    )
    presence = PresenceApp(PresenceSettings(**common, lease_replicas=3, startup_sync_wait=0.1))
    starting = asyncio.create_task(history.start())
    try:
        await within(auth.start(), 15)
        await within(presence.start(), 15)
        await wait_until_async(lambda: history.health_port != 0, 10, "history's health server")
        # Several attempts later: still there, alive, not ready.
        await asyncio.sleep(3)
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
        for app in (presence, auth, history):
            await app.stop()
