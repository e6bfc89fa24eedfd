"""`make run EXAMPLE=chat`: the supervisor starts the example backend with the stack (before the
gateways, whose decisions it makes), the banner lists it, and a client meets it through the gateway."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from centrifuge import Client

from meshcast.devtools.tokens import connection_token, stored_secret
from meshcast.testing import free_port, timeout, wait_until, within
from meshcast.testing.spawn import spawn

from .sdk import connected, disconnected, subscribed

pytestmark = pytest.mark.e2e


def _ports() -> dict[str, int]:
    names = ("nats", "port", "history", "presence", "events", "auth", "grpc", "api", "api-grpc", "api-health")
    return {name: free_port() for name in names}


async def test_make_run_example_chat_supervises_the_backend_and_the_banner_lists_it(tmp_path: Path) -> None:
    ports = _ports()
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHCAST_")}
    env["MESHCAST_RUN_DIR"] = str(run_dir)
    options = [f"--{name}-port" if name != "port" else "--port" for name in ports]
    argv = [sys.executable, "-m", "meshcast.devtools", "run", "--example", "chat"]
    for option, port in zip(options, ports.values(), strict=True):
        argv += [option, str(port)]
    proc = spawn(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        log = run_dir / "logs" / "chat.log"
        await asyncio.to_thread(wait_until, lambda: "backend started" in _read(log), 45, "the example under make run")
        banner = await within(asyncio.to_thread(_banner, proc), 30)
        assert "chat:" in banner
        assert "examples/chat/backend.py" in banner
        dana = Client(
            f"ws://127.0.0.1:{ports['port']}/connection/websocket",
            token=connection_token(stored_secret(run_dir), "dana"),
        )
        await connected(dana)
        try:
            await subscribed(dana, "chat:index")
            who = await within(dana.rpc("who", {}), 10)
            assert who.data == {"channel": "chat:index", "users": ["dana"]}
        finally:
            await disconnected(dana)
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.to_thread(proc.wait, timeout(30))


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _banner(proc: subprocess.Popen[bytes]) -> str:
    """The console up to the banner's last line (it comes once every program is ready)."""
    assert proc.stdout is not None
    lines: list[str] = []
    while not lines or "Ctrl-C stops everything" not in lines[-1]:
        line = proc.stdout.readline().decode()
        if not line:
            raise AssertionError("make run ended before its banner:\n" + "".join(lines))
        lines.append(line)
    return "".join(lines)
