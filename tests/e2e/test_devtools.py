"""`make run` and `make token` as a user meets them: real processes, a real SDK client."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from meshcast.proto.auth_pb2 import IssueConnectionTokenRequest
from meshcast.proto.auth_pb2_grpc import AuthServiceStub
from meshcast.testing import free_port, timeout, within

from .sdk import Recorder

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def _wait_for_line(proc: subprocess.Popen[str], marker: str, seconds: float) -> str:
    deadline = time.monotonic() + timeout(seconds)
    seen = []
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            seen.append(line)
            if marker in line:
                return "".join(seen)
        elif proc.poll() is not None:
            break
        else:
            time.sleep(0.05)
    raise AssertionError(f"no {marker!r} in output:\n{''.join(seen)}")


def _two_free_ports(avoid: int) -> int:
    """A port p such that p and p + 1 are both free (make run numbers gateways upwards)."""
    for _ in range(50):
        port = free_port()
        if avoid in (port, port + 1):
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("0.0.0.0", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


async def test_run_starts_two_gateways_and_token_is_accepted(tmp_path: Path) -> None:
    from centrifuge import Client

    nats_port, grpc_port = free_port(), free_port()
    first = _two_free_ports(avoid=nats_port)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "namespaces.yaml").write_text((ROOT / "config" / "namespaces.yaml").read_text())
    env = {k: v for k, v in os.environ.items() if k != "MESHCAST_TOKEN_HMAC_SECRET"}
    cmd = [sys.executable, "-m", "meshcast.devtools", "--root", str(tmp_path)]
    proc = subprocess.Popen(
        [
            *cmd,
            "run",
            "--gateways",
            "2",
            "--nats-port",
            str(nats_port),
            "--port",
            str(first),
            "--history-port",
            str(free_port()),
            "--presence-port",
            str(free_port()),
            "--auth-port",
            str(free_port()),
            "--grpc-port",
            str(grpc_port),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        banner = _wait_for_line(proc, "Ctrl-C stops everything", 60)
        assert f"ws://127.0.0.1:{first}/connection/websocket" in banner
        assert f"ws://127.0.0.1:{first + 1}/connection/websocket" in banner
        token = subprocess.run(
            [*cmd, "token", "--user", "alice"], env=env, capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
        assert token.count(".") == 2

        recorder = Recorder()
        client = Client(f"ws://127.0.0.1:{first + 1}/connection/websocket", token=token)
        await within(client.connect())
        sub = client.new_subscription("chat:index", events=recorder)
        await sub.subscribe()
        await sub.ready(timeout=5)
        # The publisher's token comes from the stack's auth service.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            issued = await AuthServiceStub(channel).IssueConnectionToken(
                IssueConnectionTokenRequest(user="bob", ttl_seconds=600)
            )
        publisher = Client(f"ws://127.0.0.1:{first}/connection/websocket", token=issued.token)
        await within(publisher.connect())
        await publisher.publish("chat:index", {"text": "hello"})
        assert await recorder.next() == {"text": "hello"}
        await client.disconnect()
        await publisher.disconnect()
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout(30))
        assert proc.stdout is not None
        proc.stdout.close()
    assert code == 0
    out = subprocess.run(["pgrep", "-f", f"--root {tmp_path}"], capture_output=True, text=True, check=False)
    assert out.stdout.strip() == ""
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path / ".run")], capture_output=True, text=True, check=False)
    assert leftover.stdout.strip() == "", "processes left behind"


def test_gateway_refuses_a_bad_namespaces_file(tmp_path: Path) -> None:
    bad = tmp_path / "ns.yaml"
    bad.write_text("namespaces:\n  - name: chat\n    history_size: lots\n    history_ttl: 5\n")
    result = subprocess.run(
        [sys.executable, "-m", "meshcast.gateway"],
        env={**os.environ, "MESHCAST_NAMESPACES_FILE": str(bad), "MESHCAST_GATEWAY_PORT": str(free_port())},
        capture_output=True,
        text=True,
        timeout=timeout(30),
        check=False,
    )
    assert result.returncode == 2
    assert "namespaces.0.history_size" in result.stderr
