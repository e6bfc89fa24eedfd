"""`make run`, `make token`, `make api-key` and `make nats-url` as a user meets them: real
processes (the supervisor a process group leader, as a shell starts a job), a real SDK client."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import signal
import socket
import subprocess
import sys
import termios
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
import nats
import pytest
from centrifuge import SubscribedContext

from meshcast.proto.auth_pb2 import IssueConnectionTokenRequest
from meshcast.proto.auth_pb2_grpc import AuthServiceStub
from meshcast.testing import free_port, keyed_channel, timeout, wait_until, wait_until_async, within

from .sdk import Recorder

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp
_CREDENTIALS_ENV = ("MESHCAST_TOKEN_HMAC_SECRET", "MESHCAST_API_KEY", "MESHCAST_RUN_DIR")
_BANNER = "Ctrl-C stops everything"


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
    out: IO[str]  # the console: a pipe, or the master side of a terminal
    output: list[str] = field(default_factory=list)

    @property
    def cmd(self) -> list[str]:
        return [sys.executable, "-m", "meshcast.devtools", "--root", str(self.root)]

    def console(self) -> str:
        with contextlib.suppress(OSError):  # EIO: a terminal whose other side is closed
            while not self.out.closed and (line := self.out.readline()):
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

    def stop(self, sig: signal.Signals = signal.SIGINT) -> int:
        """`sig` (Ctrl-C's by default) to the supervisor; the exit code."""
        self.proc.send_signal(sig)
        return self.wait()

    def wait(self) -> int:
        """The exit code, once the supervisor has stopped (bounded)."""
        code = self.proc.wait(timeout(60))
        if not self.out.closed:
            self.console()
            self.out.close()
        return code

    def devtools(self, *args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        """Another devtools command, as a user runs it while the stack runs (not raising on failure)."""
        return subprocess.run(
            [sys.executable, "-m", "meshcast.devtools", *args],
            cwd=cwd or self.root,
            env={**_env(), **env},
            capture_output=True,
            text=True,
            timeout=timeout(30),
            check=False,
        )


def _env() -> dict[str, str]:
    """The test's environment without the settings that would point devtools elsewhere."""
    return {k: v for k, v in os.environ.items() if k not in _CREDENTIALS_ENV}


def _stack_ports() -> dict[str, int]:
    """Free ports for every listener of a two-gateway stack."""
    nats_port, grpc_port = free_port(), free_port()
    first = _two_free_ports(avoid=nats_port)
    return {
        "nats": nats_port,
        "gateway-1": first,
        "gateway-2": first + 1,
        "history": free_port(),
        "presence": free_port(),
        "events": free_port(),
        "auth": free_port(),
        "grpc": grpc_port,
        "api": free_port(),
        "api-grpc": free_port(),
        "api-health": free_port(),
    }


def _run_args(ports: dict[str, int], gateways: int) -> list[str]:
    args = ["run", "--gateways", str(gateways), "--nats-port", str(ports["nats"]), "--port", str(ports["gateway-1"])]
    for name in ("history", "presence", "events", "auth", "grpc", "api", "api-grpc", "api-health"):
        args += [f"--{name}-port", str(ports[name])]
    return args


def _project(root: Path) -> Path:
    """`root` as a project for `--root`: its config (the run folder is made by `make run`)."""
    (root / "config").mkdir(parents=True, exist_ok=True)
    (root / "config" / "namespaces.yaml").write_text((ROOT / "config" / "namespaces.yaml").read_text())
    return root


Launch = Callable[..., DevStack]


def _in_a_terminal(argv: list[str], cwd: Path) -> tuple[subprocess.Popen[str], IO[str]]:
    """`argv` as a shell runs it in a terminal of its own: a session leader whose controlling
    terminal is a pty, in its foreground process group; the pty's master side, to read."""
    master, slave = pty.openpty()

    def take_the_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=_env(),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            text=True,
            start_new_session=True,
            preexec_fn=take_the_terminal,
        )
    finally:
        os.close(slave)
    return proc, open(master, errors="replace")  # DevStack closes it


@pytest.fixture
def launch() -> Iterator[Launch]:
    """Start `make run` on a root with given ports, in its own process group; killed at teardown."""
    started: list[subprocess.Popen[str]] = []

    def start(root: Path, ports: dict[str, int], gateways: int = 2, terminal: bool = False) -> DevStack:
        argv = [sys.executable, "-m", "meshcast.devtools", "--root", str(root), *_run_args(ports, gateways)]
        if terminal:
            proc, out = _in_a_terminal(argv, root)
        else:
            proc = subprocess.Popen(
                argv,
                cwd=root,
                env=_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            assert proc.stdout is not None
            out = proc.stdout
        started.append(proc)
        os.set_blocking(out.fileno(), False)
        return DevStack(root, proc, ports, out)

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout(10))


@pytest.fixture
def dev_stack(tmp_path: Path, launch: Launch) -> DevStack:
    return launch(_project(tmp_path), _stack_ports())


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


def _session(pid: int) -> int:
    """The session id of process `pid`, from /proc."""
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[3])


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


async def test_run_starts_two_gateways_binds_loopback_and_its_token_key_and_nats_url_are_accepted(
    dev_stack: DevStack,
) -> None:
    from centrifuge import Client

    first, grpc_port = dev_stack.ports["gateway-1"], dev_stack.ports["grpc"]
    try:
        banner = await dev_stack.wait_for(_BANNER, 60)
        assert f"ws://127.0.0.1:{first}/connection/websocket" in banner
        assert f"ws://127.0.0.1:{first + 1}/connection/websocket" in banner
        # Bind what you print: every socket any process of the stack listens on is loopback.
        children = _children(dev_stack.proc.pid)
        assert set(children) == {"nats", "history", "presence", "events", "auth", "api", "gateway-1", "gateway-2"}
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
        # The admin UI, logged in with what `make admin-secret` prints (not the API key).
        assert f"http://127.0.0.1:{dev_stack.ports['api']}/admin" in banner
        run_dir = str(dev_stack.root / ".run")
        admin_secret = dev_stack.devtools("admin-secret", MESHCAST_RUN_DIR=run_dir).stdout.strip()
        assert admin_secret == (dev_stack.root / ".run" / "admin-secret").read_text().strip() != key
        login = urllib.request.Request(
            dev_stack.url("api", "/admin/login"),
            data=json.dumps({"secret": admin_secret}).encode(),
            headers={"X-Meshcast-Admin": "1"},
        )

        def log_in() -> int:
            with urllib.request.urlopen(login, timeout=timeout(10)) as resp:
                return int(resp.status)

        assert await asyncio.to_thread(log_in) == 200
        await client.disconnect()
        await publisher.disconnect()

        # From another directory, the run folder named by MESHCAST_RUN_DIR: the same key, and a
        # NATS URL with the port and the password the running nats-server takes.
        assert dev_stack.devtools("api-key", cwd=Path("/"), MESHCAST_RUN_DIR=run_dir).stdout.strip() == key
        url = dev_stack.devtools("nats-url", cwd=Path("/"), MESHCAST_RUN_DIR=run_dir).stdout.strip()
        assert url.startswith("nats://backend:")
        assert url.endswith(f"@127.0.0.1:{dev_stack.ports['nats']}")
        backend = await within(nats.connect(url, allow_reconnect=False, connect_timeout=int(timeout(5))))
        await within(backend.flush())
        await backend.close()
    finally:
        code = dev_stack.stop()
    assert code == 0
    _assert_stopped_gateways_first_nats_last(dev_stack.root, children)
    _assert_nothing_left(dev_stack.root, children.values())


def _stop_order(root: Path) -> list[str]:
    """The programs as the stack's last stop saw them stop, from the stack log."""
    log = (root / ".run" / "logs" / "stack.log").read_text()
    last = log.rpartition(" stopping the stack\n")[2]
    return [line.split()[1] for line in last.splitlines() if " stopped with code " in line]


def _assert_stopped_gateways_first_nats_last(root: Path, names: Iterable[str]) -> None:
    order = _stop_order(root)
    assert sorted(order) == sorted(names), order
    gateways = [name for name in order if name.startswith("gateway-")]
    assert order[: len(gateways)] == gateways, order
    assert order[-1] == "nats", order


def _alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie waiting for init to reap it has exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _assert_nothing_left(root: Path, pids: Iterable[int]) -> None:
    alive = [pid for pid in pids if _alive(pid)]
    assert alive == [], f"processes left behind: {alive}"
    out = subprocess.run(["pgrep", "-f", f"--root {root}"], capture_output=True, text=True, check=False)
    assert out.stdout.strip() == ""
    leftover = subprocess.run(["pgrep", "-f", str(root / ".run")], capture_output=True, text=True, check=False)
    assert leftover.stdout.strip() == "", "processes left behind"


async def test_run_restarts_a_killed_gateway_and_history_and_clients_come_back(dev_stack: DevStack) -> None:
    from centrifuge import Client

    seen: set[int] = set()
    try:
        await dev_stack.wait_for(_BANNER, 60)
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


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The failed command's message: exit 1, one line on stderr, nothing on stdout."""
    assert result.returncode == 1, result
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("command", "missing"),
    [("token", "secret"), ("api-key", "api-key"), ("admin-secret", "admin-secret"), ("nats-url", "nats-users.json")],
)
def test_a_reader_without_make_run_fails_in_one_line_naming_the_folder_and_creates_nothing(
    tmp_path: Path, command: str, missing: str
) -> None:
    def devtools(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meshcast.devtools", *args],
            cwd=tmp_path,
            env={**_env(), **env},
            capture_output=True,
            text=True,
            timeout=timeout(30),
            check=False,
        )

    # No run folder at all: none is made, and the message says where it looked.
    absent = tmp_path / "elsewhere" / ".run"
    message = _one_line(devtools(command, MESHCAST_RUN_DIR=str(absent)))
    assert f"no run folder {absent}" in message
    assert "start `make run` first" in message
    assert not absent.parent.exists()
    # A run folder without the file (as `make run` leaves none behind): the file is named, not made.
    run_dir = tmp_path / ".run"
    run_dir.mkdir()
    message = _one_line(devtools("--root", str(tmp_path), command))
    assert f"no {missing} in {run_dir}" in message
    assert "start `make run` first" in message
    assert list(run_dir.iterdir()) == []


def test_devtools_finds_its_checkout_from_any_directory_and_says_it_needs_the_venv(tmp_path: Path) -> None:
    where = "from meshcast.devtools.runfolder import run_folder; print(run_folder())"

    def ask(*argv: str, **env: str) -> str:
        return subprocess.run(
            [sys.executable, *argv],
            cwd=tmp_path,
            env={**_env(), **env},
            capture_output=True,
            text=True,
            timeout=timeout(30),
            check=True,
        ).stdout

    assert ask("-c", where).strip() == str(ROOT / ".run")
    assert ask("-c", where, MESHCAST_RUN_DIR=str(tmp_path / "mine")).strip() == str(tmp_path / "mine")
    for command in ([], ["nats-url"], ["token"], ["api-key"], ["run"]):
        assert ".venv/bin/python -m meshcast.devtools" in " ".join(
            ask("-m", "meshcast.devtools", *command, "--help").split()
        )


def _snapshot(run_dir: Path) -> dict[str, tuple[int, int, int]]:
    """What a `make run` writes before it starts anything, (inode, size, mtime) by name, and how
    many times the stack and nats-server (on its JetStream store) were started."""
    found = {}
    for name in ("run.lock", "nats-users.json", "secret", "api-key", "nats/nats.conf"):
        stat = (run_dir / name).stat()
        found[name] = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    found["stack starts"] = (0, (run_dir / "logs" / "stack.log").read_text().count("starting the stack"), 0)
    found["nats starts"] = (0, (run_dir / "logs" / "nats.log").read_text().count("Starting nats-server"), 0)
    return found


async def test_a_second_run_on_the_same_folder_is_refused_before_it_touches_anything(
    tmp_path: Path, launch: Launch
) -> None:
    first = launch(_project(tmp_path), _stack_ports(), gateways=1)
    try:
        await first.wait_for(_BANNER, 60)
        run_dir = tmp_path / ".run"
        before = _snapshot(run_dir)
        assert before["nats starts"][1] == 1
        children = _children(first.proc.pid)
        pid = first.proc.pid

        second = first.devtools("--root", str(tmp_path), *_run_args(first.ports, gateways=1))
        message = _one_line(second)
        assert f"another make run is running (pid {pid}" in message
        assert f"stop it with Ctrl-C or kill {pid}" in message
        assert _snapshot(run_dir) == before  # no second nats-server on the store; nats.conf, passwords untouched
        assert _children(pid) == children
        assert _status(first.url("history", "/ready")) == 200
    finally:
        code = first.stop()
    assert code == 0
    _assert_nothing_left(tmp_path, children.values())


def test_a_port_another_program_holds_is_named_with_its_service_before_anything_starts(tmp_path: Path) -> None:
    ports = _stack_ports()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports["history"]))
        squatter.listen()
        result = subprocess.run(
            [sys.executable, "-m", "meshcast.devtools", "--root", str(_project(tmp_path)), *_run_args(ports, 1)],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=timeout(30),
            check=False,
        )
    message = _one_line(result)
    assert f"port {ports['history']} (history) is already in use on 127.0.0.1" in message
    assert "--history-port" in message
    # Nothing started, nothing written but the lock: no nats.conf, no store, no passwords, no logs.
    assert [path.name for path in (tmp_path / ".run").iterdir()] == ["run.lock"]


@pytest.mark.parametrize("stop", ["closed terminal", "SIGTERM"])
async def test_a_closed_terminal_and_sigterm_stop_like_ctrl_c_gateways_first_and_nats_last(
    tmp_path: Path, launch: Launch, stop: str
) -> None:
    in_terminal = stop == "closed terminal"
    stack = launch(_project(tmp_path), _stack_ports(), gateways=2, terminal=in_terminal)
    await stack.wait_for(_BANNER, 60)
    children = _children(stack.proc.pid)
    assert set(children) == {"nats", "history", "presence", "events", "auth", "api", "gateway-1", "gateway-2"}
    # In sessions of their own, without the terminal: what it sends its foreground group
    # (Ctrl-C's SIGINT, a hangup's SIGHUP) reaches the supervisor alone.
    assert [pid for pid in children.values() if _session(pid) != pid] == []
    if in_terminal:
        stack.out.close()  # the kernel hangs the terminal up: SIGHUP, and the console is gone
        assert stack.wait() == 0
    else:
        assert stack.stop(signal.SIGTERM) == 0
    _assert_stopped_gateways_first_nats_last(tmp_path, children)
    _assert_nothing_left(tmp_path, children.values())


async def test_a_killed_supervisor_takes_its_programs_along_and_its_lock_does_not_block_the_next_run(
    tmp_path: Path, launch: Launch
) -> None:
    killed = launch(_project(tmp_path), _stack_ports(), gateways=1)
    await killed.wait_for(_BANNER, 60)
    children = _children(killed.proc.pid)
    killed.proc.kill()
    killed.wait()
    wait_until(
        lambda: not any(_alive(pid) for pid in children.values()), 30, what="the killed supervisor's programs to exit"
    )
    assert f'"pid": {killed.proc.pid}' in (tmp_path / ".run" / "run.lock").read_text()  # left behind, stale

    # Its ports are free again, but others' tests may have been handed one since: fresh ones.
    again = launch(tmp_path, _stack_ports(), gateways=1)
    try:
        await again.wait_for(_BANNER, 60)
        restarted = _children(again.proc.pid)
        assert _status(again.url("gateway-1", "/ready")) == 200
    finally:
        code = again.stop()
    assert code == 0
    _assert_nothing_left(tmp_path, restarted.values())
