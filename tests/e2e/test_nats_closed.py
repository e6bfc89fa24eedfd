"""A service whose NATS connection is closed for good exits (to be restarted);
one whose connection merely dropped waits for it. Real nats-server, real
service processes; the closing is done from outside, by the server."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import nats
import pytest
import websockets

from meshcast.devtools.tokens import connection_token
from meshcast.testing import (
    NatsServer,
    ServiceProcess,
    gateway_process,
    history_process,
    timeout,
    wait_until,
    wait_until_async,
    within,
)

from ..natslimits import reload_with
from .conftest import NAMESPACES, SECRET

pytestmark = pytest.mark.e2e

CLOSED_LOG = "nats connection closed for good"


def _status(url: str) -> int | None:
    """The HTTP status of `url`, None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            status: int = resp.status
            return status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError):
        return None


def _health_until_exit(proc: ServiceProcess, health_url: str, seconds: float) -> list[tuple[bool, int | None]]:
    """Probe `health_url` until the process exits; each answer with whether the
    service had already logged its closed connection when the probe was sent."""
    assert proc.process is not None
    seen: list[tuple[bool, int | None]] = []
    deadline = time.monotonic() + timeout(seconds)
    while proc.process.poll() is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{proc.module} still running:\n{proc.logs()[-3000:]}")
        said_closed = CLOSED_LOG in proc.logs()
        seen.append((said_closed, _status(health_url)))
        time.sleep(0.01)
    return seen


@pytest.fixture
def nats_server_on_a_port(tmp_path: Path) -> NatsServer:
    # A restart binds the port it had: the services' URLs stay good.
    return NatsServer(tmp_path / "nats")


async def test_history_exits_when_the_server_closes_its_connection_for_good(
    tmp_path: Path, nats_server_on_a_port: NatsServer
) -> None:
    server = nats_server_on_a_port.start()
    history = history_process(tmp_path, [server.url], namespaces_file=NAMESPACES)
    try:
        history.start(wait=30)
        health_url = history.health_url.replace("/ready", "/health") if history.health_url else ""
        assert _status(health_url) == 200
        nc = await nats.connect(server.url)
        # Every reply is now bigger than the server accepts: -ERR 'Maximum Payload Violation'.
        reload_with(server, "max_payload: 16")
        await nc.publish("$SRV.PING", b"", reply=nc.new_inbox())
        await within(nc.flush())
        seen = _health_until_exit(history, health_url, 30)
        await nc.close()
        assert history.process is not None
        assert history.process.returncode == 1
        log = history.logs()
        assert CLOSED_LOG in log
        assert "maximum payload violation" in log
        # Once the service knew, no probe was told it is alive; nor after any first "no".
        assert all(status != 200 for said_closed, status in seen if said_closed)
        first_no = next((i for i, (_, status) in enumerate(seen) if status != 200), len(seen))
        assert all(status != 200 for _, status in seen[first_no:])
    finally:
        history.kill()
        server.stop()


async def test_gateway_exits_when_a_subscribe_exceeds_the_max_control_line(
    tmp_path: Path, nats_server_on_a_port: NatsServer
) -> None:
    """The issue's case: a SUB line over max_control_line, from a client's subscribe."""
    server = nats_server_on_a_port.start()
    gateway = gateway_process(tmp_path, [server.url], secret=SECRET, namespaces_file=NAMESPACES)
    try:
        gateway.start(wait=30)
        reload_with(server, "max_control_line: 160")
        channel = "c" * 200  # allowed at the edge (255), its SUB line is over 160 bytes
        async with websockets.connect(f"ws://127.0.0.1:{gateway.env['_PORT']}/connection/websocket") as ws:
            await ws.send(json.dumps({"id": 1, "connect": {"token": connection_token(SECRET, "alice")}}))
            assert "connect" in json.loads(await within(ws.recv()))
            await ws.send(json.dumps({"id": 2, "subscribe": {"channel": channel}}))
            proc = gateway.process
            assert proc is not None
            await wait_until_async(lambda: proc.poll() is not None, 30, what="the gateway to exit")
            # The drained client was told to reconnect (elsewhere), not left hanging.
            await within(ws.wait_closed(), 10)
            assert ws.close_code is not None
            assert 3000 <= ws.close_code < 3500
        assert proc.returncode == 1
        log = gateway.logs()
        assert CLOSED_LOG in log
        assert "maximum control line exceeded" in log
    finally:
        gateway.kill()
        server.stop()


def test_a_plain_disconnect_does_not_stop_a_service(tmp_path: Path, nats_server_on_a_port: NatsServer) -> None:
    server = nats_server_on_a_port.start()
    history = history_process(tmp_path, [server.url], namespaces_file=NAMESPACES)
    try:
        history.start(wait=30)
        ready_url, proc = history.health_url, history.process
        assert ready_url is not None
        assert proc is not None
        health_url = ready_url.replace("/ready", "/health")
        server.stop()
        wait_until(lambda: _status(ready_url) == 503, 10, what="history to notice NATS is gone")
        # Reconnecting for a while (several reconnect waits): alive, not ready, still running.
        until = time.monotonic() + 2.0
        while time.monotonic() < until:
            assert proc.poll() is None, history.logs()[-3000:]
            assert _status(health_url) == 200
            time.sleep(0.05)
        server.start(wait=20)
        wait_until(lambda: _status(ready_url) == 200 or proc.poll() is not None, 20, what="history ready again")
        assert proc.poll() is None, history.logs()[-3000:]
        assert CLOSED_LOG not in history.logs()
    finally:
        history.kill()
        server.stop()
