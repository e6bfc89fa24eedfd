"""`make run` and `make token` as a user meets them: real processes, a real SDK client."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from centrifuge import SubscribedContext

from meshcast.proto.auth_pb2 import IssueConnectionTokenRequest
from meshcast.proto.auth_pb2_grpc import AuthServiceStub
from meshcast.testing import free_port, keyed_channel, timeout, wait_until_async, within

from .sdk import Recorder

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


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


@dataclass
class DevStack:
    """`python -m meshcast.devtools run` as a subprocess, its console read as it goes."""

    root: Path
    proc: subprocess.Popen[str]
    ports: dict[str, int]
    output: list[str] = field(default_factory=list)

    @property
    def cmd(self) -> list[str]:
        return [sys.executable, "-m", "meshcast.devtools", "--root", str(self.root)]

    def console(self) -> str:
        assert self.proc.stdout is not None
        while not self.proc.stdout.closed and (line := self.proc.stdout.readline()):
            self.output.append(line)
        return "".join(self.output)

    async def wait_for(self, marker: str, seconds: float) -> str:
        """The console so far, once it shows `marker` (the event loop runs meanwhile)."""
        deadline = time.monotonic() + timeout(seconds)
        while marker not in self.console() and self.proc.poll() is None:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        text = self.console()
        assert marker in text, f"no {marker!r} in output:\n{text}"
        return text

    def url(self, name: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}{path}"

    def stop(self) -> int:
        """Ctrl-C, as a terminal sends it; the exit code."""
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout(60))
        self.console()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code


@pytest.fixture
def dev_stack(tmp_path: Path) -> Iterator[DevStack]:
    nats_port, grpc_port = free_port(), free_port()
    first = _two_free_ports(avoid=nats_port)
    ports = {
        "nats": nats_port,
        "gateway-1": first,
        "gateway-2": first + 1,
        "history": free_port(),
        "presence": free_port(),
        "auth": free_port(),
        "grpc": grpc_port,
        "api": free_port(),
        "api-grpc": free_port(),
        "api-health": free_port(),
    }
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "namespaces.yaml").write_text((ROOT / "config" / "namespaces.yaml").read_text())
    env = {k: v for k, v in os.environ.items() if k not in ("MESHCAST_TOKEN_HMAC_SECRET", "MESHCAST_API_KEY")}
    args = ["run", "--gateways", "2", "--nats-port", str(nats_port), "--port", str(first)]
    for name in ("history", "presence", "auth", "grpc", "api", "api-grpc", "api-health"):
        args += [f"--{name}-port", str(ports[name])]
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshcast.devtools", "--root", str(tmp_path), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    stack = DevStack(tmp_path, proc, ports)
    try:
        yield stack
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout(10))


def _children(pid: int) -> dict[str, int]:
    """The stack's processes by name (nats, history, ..., gateway-N), from /proc."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) != pid:
            continue
        if Path(argv[0].decode()).name == "nats-server":
            found["nats"] = int(entry.name)
        elif b"-m" in argv:
            name = argv[argv.index(b"-m") + 1].decode().removeprefix("meshcast.")
            for var in environ:
                if var.startswith(b"MESHCAST_NODE_NAME="):
                    name = var.partition(b"=")[2].decode()
            found[name] = int(entry.name)
    return found


def _listening(pids: list[int]) -> list[tuple[str, int]]:
    """Every listening TCP socket (address, port) the processes `pids` hold, from /proc."""
    inodes: set[str] = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            cols = row.split()
            if cols[3] == _LISTEN and cols[9] in inodes:
                address, _, port = cols[1].partition(":")
                found.append((_address(address), int(port, 16)))
    return found


def _address(hex_address: str) -> str:
    """/proc/net/tcp's little-endian hex address as text (IPv4-mapped IPv6 as IPv4)."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 16 and words[:12] == b"\0" * 10 + b"\xff\xff":
        words = words[12:]
    family = socket.AF_INET if len(words) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, words)


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            status: int = resp.status
            return status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError):
        return None


def _refused(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(timeout(2))
        try:
            probe.connect((host, port))
        except ConnectionRefusedError:
            return True
        return False


class Resubscribes(Recorder):
    """A recorder that also counts the subscription's (re)subscribes."""

    def __init__(self) -> None:
        super().__init__()
        self.subscribed = 0

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        self.subscribed += 1


async def test_run_starts_two_gateways_binds_loopback_and_token_is_accepted(dev_stack: DevStack) -> None:
    from centrifuge import Client

    first, grpc_port = dev_stack.ports["gateway-1"], dev_stack.ports["grpc"]
    try:
        banner = await dev_stack.wait_for("Ctrl-C stops everything", 60)
        assert f"ws://127.0.0.1:{first}/connection/websocket" in banner
        assert f"ws://127.0.0.1:{first + 1}/connection/websocket" in banner
        # Bind what you print: every socket any process of the stack listens on is loopback.
        children = _children(dev_stack.proc.pid)
        assert set(children) == {"nats", "history", "presence", "auth", "api", "gateway-1", "gateway-2"}
        sockets = _listening(list(children.values()))
        assert {port for _, port in sockets} >= set(dev_stack.ports.values())
        assert {address for address, _ in sockets} == {"127.0.0.1"}, sockets
        for port in dev_stack.ports.values():
            assert _refused("127.0.0.2", port), f"port {port} answers on 127.0.0.2"
            socket.create_connection(("127.0.0.1", port), timeout(2)).close()

        token = subprocess.run(
            [*dev_stack.cmd, "token", "--user", "alice"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
        assert token.count(".") == 2

        recorder = Recorder()
        client = Client(f"ws://127.0.0.1:{first + 1}/connection/websocket", token=token)
        await within(client.connect())
        sub = client.new_subscription("chat:index", events=recorder)
        await sub.subscribe()
        await sub.ready(timeout=5)
        # The publisher's token comes from the stack's auth service, with the key
        # `make api-key` prints (the auth gRPC API and the server API share it).
        key = subprocess.run(
            [*dev_stack.cmd, "api-key"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await AuthServiceStub(channel).IssueConnectionToken(IssueConnectionTokenRequest(user="mallory"))
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        async with keyed_channel(f"127.0.0.1:{grpc_port}", key) as channel:
            issued = await AuthServiceStub(channel).IssueConnectionToken(
                IssueConnectionTokenRequest(user="bob", ttl_seconds=600)
            )
        publisher = Client(f"ws://127.0.0.1:{first}/connection/websocket", token=issued.token)
        await within(publisher.connect())
        await publisher.publish("chat:index", {"text": "hello"})
        assert await recorder.next() == {"text": "hello"}
        # And from a backend, through the server API with the same key.
        assert f"http://127.0.0.1:{dev_stack.ports['api']}/api/<method>" in banner
        request = urllib.request.Request(
            dev_stack.url("api", "/api/publish"),
            data=b'{"channel": "chat:index", "data": {"text": "from a backend"}}',
            headers={"X-API-Key": key},
        )

        def call() -> bytes:
            with urllib.request.urlopen(request, timeout=timeout(10)) as resp:
                return bytes(resp.read())

        assert b'"offset"' in await asyncio.to_thread(call)
        assert await recorder.next() == {"text": "from a backend"}
        await client.disconnect()
        await publisher.disconnect()
    finally:
        code = dev_stack.stop()
    assert code == 0
    _assert_nothing_left(dev_stack.root, children.values())


def _assert_nothing_left(root: Path, pids: Iterable[int]) -> None:
    alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    assert alive == [], f"processes left behind: {alive}"
    out = subprocess.run(["pgrep", "-f", f"--root {root}"], capture_output=True, text=True, check=False)
    assert out.stdout.strip() == ""
    leftover = subprocess.run(["pgrep", "-f", str(root / ".run")], capture_output=True, text=True, check=False)
    assert leftover.stdout.strip() == "", "processes left behind"


async def test_run_restarts_a_killed_gateway_and_history_and_clients_come_back(dev_stack: DevStack) -> None:
    from centrifuge import Client

    seen: set[int] = set()
    try:
        await dev_stack.wait_for("Ctrl-C stops everything", 60)
        token = subprocess.run(
            [*dev_stack.cmd, "token", "--user", "alice"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
        gateway_1 = f"ws://127.0.0.1:{dev_stack.ports['gateway-1']}/connection/websocket"
        gateway_2 = f"ws://127.0.0.1:{dev_stack.ports['gateway-2']}/connection/websocket"
        recorder = Resubscribes()
        client = Client(gateway_1, token=token, max_reconnect_delay=0.5)
        await within(client.connect())
        sub = client.new_subscription("chat:index", events=recorder)
        await sub.subscribe()
        await sub.ready(timeout=5)
        publisher = Client(gateway_2, token=token)
        await within(publisher.connect())

        before = _children(dev_stack.proc.pid)
        seen.update(before.values())
        os.kill(before["gateway-1"], signal.SIGKILL)
        os.kill(before["history"], signal.SIGKILL)
        for name in ("gateway-1", "history"):
            await dev_stack.wait_for(f"{name} exited with code -9 (SIGKILL); restarting in 0.5 s", 10)
        for name in ("gateway-1", "history"):
            await dev_stack.wait_for(f"{name} is back", 60)
            assert _status(dev_stack.url(name, "/ready")) == 200
        after = _children(dev_stack.proc.pid)
        seen.update(after.values())
        assert after.keys() == before.keys()
        assert after["gateway-1"] != before["gateway-1"]
        assert after["history"] != before["history"]
        assert {n: after[n] for n in ("nats", "presence", "auth", "gateway-2")} == {
            n: before[n] for n in ("nats", "presence", "auth", "gateway-2")
        }
        log = (dev_stack.root / ".run" / "logs" / "stack.log").read_text()
        assert "gateway-1 exited with code -9 (SIGKILL)" in log
        assert "history is back" in log

        # The SDK reconnects to the same URL (gateway-1, restarted) and its subscription works again.
        await wait_until_async(lambda: recorder.subscribed >= 2, 30, what="the client to resubscribe")
        await publisher.publish("chat:index", {"text": "after the restart"})
        assert await recorder.next(10) == {"text": "after the restart"}
        history = await within(sub.history(limit=10))  # answered by the restarted history service
        assert {"text": "after the restart"} in [p.data for p in history.publications]
        await client.disconnect()
        await publisher.disconnect()
    finally:
        code = dev_stack.stop()
    assert code == 0
    assert "stopping..." in dev_stack.console()
    _assert_nothing_left(dev_stack.root, list(seen))


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
