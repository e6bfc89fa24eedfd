"""Process management for the bench: nats-server, gateways, the history, presence, API and auth services, OS limits.

Every child process is started so that it cannot outlive the bench: it gets
``PR_SET_PDEATHSIG`` (Linux) and its own process group, and ``stop()`` first
terminates the group, then kills it after a bounded grace period.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

_PR_SET_PDEATHSIG = 1
_LOOPBACK = "127.0.0.1"


class StackError(RuntimeError):
    """A server of the stack failed to start or to become ready in time."""


def set_parent_death_signal() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, 1_048_576) if hard == resource.RLIM_INFINITY else hard
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct free ports (sockets held open until all chosen)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((_LOOPBACK, 0))
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def http_ok(url: str, timeout: float) -> bool:
    """Return True when ``GET url`` answers 200 within ``timeout`` seconds."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def prometheus_values(url: str, timeout: float) -> dict[str, float]:
    """``GET url`` (Prometheus text format) as ``{"name{labels}": value}``; empty on any failure."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            text = resp.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError, ValueError):
        return {}
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            values[key] = float(value)
    return values


def tail(path: Path, max_lines: int = 20) -> str:
    """Return the last lines of a (log) file, or an empty string."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-max_lines:])


def tree_rss(pid: int) -> int:
    """Resident set size of a process plus all its descendants, in bytes."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for item in procs:
        try:
            total += int(item.memory_info().rss)
        except psutil.Error:
            continue
    return total


def tree_cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of a process plus all its live descendants."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for item in procs:
        try:
            times = item.cpu_times()
        except psutil.Error:
            continue
        total += float(times.user) + float(times.system)
    return total


def listen_overflows() -> int:
    """Host-wide count of TCP connections dropped by full listen queues (Linux)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return 0
    for header, values in zip(lines[::2], lines[1::2], strict=False):
        if header.startswith("TcpExt:"):
            fields = dict(zip(header.split()[1:], values.split()[1:], strict=False))
            return int(fields.get("ListenOverflows", "0"))
    return 0


@dataclass
class ManagedProcess:
    """A child process in its own process group, with its stderr in a file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return int(self.popen.pid)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, then SIGKILL it after ``grace`` seconds."""
        if self.popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=grace)
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=grace)

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)


def spawn(name: str, argv: list[str], env: dict[str, str], log_path: Path) -> ManagedProcess:
    """Start ``argv`` in a new session with stdout+stderr appended to ``log_path``."""
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            preexec_fn=set_parent_death_signal,
        )
    return ManagedProcess(name=name, popen=popen, log_path=log_path)


def wait_until(check: Callable[[], bool], proc: ManagedProcess, timeout: float, interval: float = 0.1) -> None:
    """Poll ``check`` every ``interval`` seconds until True; raise StackError on timeout or early exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise StackError(f"{proc.name} exited early with code {proc.popen.returncode}:\n{tail(proc.log_path)}")
        if check():
            return
        time.sleep(interval)
    raise StackError(f"{proc.name} not ready after {timeout:.0f}s:\n{tail(proc.log_path)}")


@dataclass
class NatsServer:
    """A private nats-server with JetStream, a websocket listener and monitoring."""

    proc: ManagedProcess
    client_port: int
    ws_port: int
    http_port: int
    # The command line, to start it again on the same ports and store (`restart_nats`).
    argv: tuple[str, ...] = ()

    @property
    def nats_url(self) -> str:
        return f"nats://{_LOOPBACK}:{self.client_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{_LOOPBACK}:{self.ws_port}/"


def _nats_config(client_port: int, ws_port: int, http_port: int) -> str:
    return (
        f'listen: "{_LOOPBACK}:{client_port}"\n'
        f'http: "{_LOOPBACK}:{http_port}"\n'
        "max_payload: 1048576\n"
        'write_deadline: "10s"\n'
        "websocket {\n"
        f'  listen: "{_LOOPBACK}:{ws_port}"\n'
        "  no_tls: true\n"
        "}\n"
    )


def start_nats(binary: str, workdir: Path, timeout: float) -> NatsServer:
    """Start nats-server on free loopback ports and wait for /healthz."""
    client_port, ws_port, http_port = free_ports(3)
    conf = workdir / "nats.conf"
    conf.write_text(_nats_config(client_port, ws_port, http_port))
    store = Path(tempfile.mkdtemp(prefix="js-", dir=workdir))
    argv = [binary, "-c", str(conf), "-js", "-sd", str(store)]
    proc = spawn("nats-server", argv, dict(os.environ), workdir / "nats-server.log")
    server = NatsServer(proc, client_port, ws_port, http_port, tuple(argv))
    _wait_healthy(server, timeout, 0.1)
    return server


def restart_nats(server: NatsServer, timeout: float) -> NatsServer:
    """Start a stopped ``server`` again (same ports, config and JetStream store); wait for /healthz, polled finely."""
    proc = spawn("nats-server", list(server.argv), dict(os.environ), server.proc.log_path)
    again = NatsServer(proc, server.client_port, server.ws_port, server.http_port, server.argv)
    _wait_healthy(again, timeout, 0.005)
    return again


def _wait_healthy(server: NatsServer, timeout: float, interval: float) -> None:
    health = f"http://{_LOOPBACK}:{server.http_port}/healthz"
    try:
        wait_until(lambda: http_ok(health, 0.5), server.proc, timeout, interval)
    except BaseException:
        server.proc.stop()
        raise


@dataclass
class Gateway:
    """A running Meshcast gateway subprocess."""

    proc: ManagedProcess
    port: int

    @property
    def ws_url(self) -> str:
        return f"ws://{_LOOPBACK}:{self.port}/connection/websocket"


# All bench load comes from 127.0.0.1, far above a gateway's per-IP connect rate
# and, for the publisher, its per-connection command rate: the bench lifts both
# (unknown settings are ignored by gateways that have no such limits).
LIFTED_GATEWAY_LIMITS = {
    "MESHCAST_IP_CONNECT_RATE": "1000000000",
    "MESHCAST_IP_CONNECT_BURST": "1000000000",
    "MESHCAST_COMMAND_RATE": "1000000000",
    "MESHCAST_COMMAND_BURST": "1000000000",
}

NAMESPACES_YAML = """namespaces:
  - name: bench
    allow_publish: true
    allow_subscribe: true
"""


STORM_NAMESPACE = "storm"


def storm_namespaces_yaml(publications: int) -> str:
    """The bench namespace plus ``storm``: history and recovery for ``publications`` missed ones.

    ``history_size`` stays above ``publications`` (a recovery from an empty
    channel needs fewer missed publications than the size) and
    ``recovery_max_publications`` at least equals it.
    """
    size = max(1000, publications + 1)
    limit = max(1000, publications)
    return NAMESPACES_YAML + (
        f"  - name: {STORM_NAMESPACE}\n"
        f"    history_size: {size}\n"
        "    history_ttl: 300\n"
        "    recovery: true\n"
        "    allow_publish: true\n"
        "    allow_subscribe: true\n"
        f"    recovery_max_publications: {limit}\n"
    )


def _spawn_ready(
    name: str, argv: list[str], env: dict[str, str], workdir: Path, url: str, timeout: float
) -> ManagedProcess:
    """Spawn `argv` with `env` (on top of this process's) logging to ``<name>.log``, and wait
    (bounded) for `url` to answer 200; a start that fails stops the process."""
    proc = spawn(name, argv, {**os.environ, **env}, workdir / f"{name}.log")
    try:
        wait_until(lambda: http_ok(url, 0.5), proc, timeout)
    except BaseException:
        proc.stop()
        raise
    return proc


@dataclass
class HistoryService:
    """A running ``python -m meshcast.history`` subprocess."""

    proc: ManagedProcess
    health_port: int


def start_history(argv: list[str], nats_url: str, namespaces: Path, workdir: Path, timeout: float) -> HistoryService:
    """Start the history service (it creates the streams) and wait (bounded) for ``GET /ready``."""
    port = free_port()
    env = {
        "MESHCAST_NATS_URL": nats_url,
        "MESHCAST_NAMESPACES_FILE": str(namespaces),
        "MESHCAST_HEALTH_HOST": _LOOPBACK,
        "MESHCAST_HEALTH_PORT": str(port),
    }
    proc = _spawn_ready("history", argv, env, workdir, f"http://{_LOOPBACK}:{port}/ready", timeout)
    return HistoryService(proc, port)


PRESENCE_NAMESPACE = "pres"

PRESENCE_NAMESPACES_YAML = f"""namespaces:
  - name: {PRESENCE_NAMESPACE}
    presence: true
    join_leave: true
    allow_publish: true
"""


@dataclass
class PresenceService:
    """A running ``python -m meshcast.presence`` subprocess."""

    proc: ManagedProcess
    health_port: int

    @property
    def metrics_url(self) -> str:
        return f"http://{_LOOPBACK}:{self.health_port}/metrics"


def start_presence(argv: list[str], nats_url: str, workdir: Path, timeout: float) -> PresenceService:
    """Start the presence service (it needs no namespaces) and wait (bounded) for ``GET /ready``."""
    port = free_port()
    env = {"MESHCAST_NATS_URL": nats_url, "MESHCAST_HEALTH_HOST": _LOOPBACK, "MESHCAST_HEALTH_PORT": str(port)}
    proc = _spawn_ready("presence", argv, env, workdir, f"http://{_LOOPBACK}:{port}/ready", timeout)
    return PresenceService(proc, port)


def write_namespaces(workdir: Path, text: str = NAMESPACES_YAML) -> Path:
    """Write the namespaces YAML shared by the gateway and the history service."""
    path = workdir / "namespaces.yaml"
    path.write_text(text)
    return path


def start_gateway(
    argv: list[str],
    nats_url: str,
    secret: str,
    workdir: Path,
    timeout: float,
    namespaces: Path | None = None,
    name: str = "gateway",
    extra_env: dict[str, str] | None = None,
) -> Gateway:
    """Start the gateway and wait (bounded) for ``GET /health`` to answer 200; ``name`` names its log."""
    port = free_port()
    if namespaces is None:
        namespaces = write_namespaces(workdir)
    env = {
        "MESHCAST_NATS_URL": nats_url,
        "MESHCAST_GATEWAY_HOST": _LOOPBACK,
        "MESHCAST_GATEWAY_PORT": str(port),
        "MESHCAST_TOKEN_HMAC_SECRET": secret,
        "MESHCAST_NAMESPACES_FILE": str(namespaces),
        **(extra_env or {}),
    }
    proc = _spawn_ready(name, argv, env, workdir, f"http://{_LOOPBACK}:{port}/health", timeout)
    return Gateway(proc, port)


@dataclass
class ApiService:
    """A running ``python -m meshcast.api`` subprocess (the server API)."""

    proc: ManagedProcess
    http_port: int
    health_port: int

    @property
    def base_url(self) -> str:
        return f"http://{_LOOPBACK}:{self.http_port}/api"


def start_api(
    argv: list[str], nats_url: str, api_key: str, namespaces: Path, workdir: Path, timeout: float
) -> ApiService:
    """Start the server API (HTTP and gRPC on loopback) and wait (bounded) for ``GET /ready``."""
    http_port, grpc_port, health_port = free_ports(3)
    env = {
        "MESHCAST_NATS_URL": nats_url,
        "MESHCAST_NAMESPACES_FILE": str(namespaces),
        "MESHCAST_API_KEY": api_key,
        "MESHCAST_HTTP_HOST": _LOOPBACK,
        "MESHCAST_HTTP_PORT": str(http_port),
        "MESHCAST_GRPC_HOST": _LOOPBACK,
        "MESHCAST_GRPC_PORT": str(grpc_port),
        "MESHCAST_HEALTH_HOST": _LOOPBACK,
        "MESHCAST_HEALTH_PORT": str(health_port),
    }
    proc = _spawn_ready("api", argv, env, workdir, f"http://{_LOOPBACK}:{health_port}/ready", timeout)
    return ApiService(proc, http_port, health_port)


def api_namespaces_yaml(history_namespace: str) -> str:
    """The bench namespace (live only) plus ``history_namespace``: history kept, publishes acked once stored."""
    return NAMESPACES_YAML + (
        f"  - name: {history_namespace}\n"
        "    history_size: 1000\n"
        "    history_ttl: 300\n"
        "    allow_publish: true\n"
        "    allow_subscribe: true\n"
    )


@dataclass
class AuthService:
    """A running ``python -m meshcast.auth`` subprocess (the gRPC AuthService)."""

    proc: ManagedProcess
    grpc_port: int
    health_port: int

    @property
    def grpc_target(self) -> str:
        return f"{_LOOPBACK}:{self.grpc_port}"


def start_auth(
    argv: list[str], nats_url: str, api_key: str, secret: str, nats_timeout: float, workdir: Path, timeout: float
) -> AuthService:
    """Start the auth service (HS256 with the gateways' ``secret``, gRPC on loopback) and wait for ``GET /ready``.

    ``nats_timeout`` bounds each of its revocations and disconnects (``MESHCAST_NATS_TIMEOUT``).
    """
    grpc_port, health_port = free_ports(2)
    env = {
        "MESHCAST_NATS_URL": nats_url,
        "MESHCAST_NATS_TIMEOUT": str(nats_timeout),
        "MESHCAST_API_KEY": api_key,
        "MESHCAST_TOKEN_HMAC_SECRET": secret,
        "MESHCAST_GRPC_HOST": _LOOPBACK,
        "MESHCAST_GRPC_PORT": str(grpc_port),
        "MESHCAST_HEALTH_HOST": _LOOPBACK,
        "MESHCAST_HEALTH_PORT": str(health_port),
    }
    proc = _spawn_ready("auth", argv, env, workdir, f"http://{_LOOPBACK}:{health_port}/ready", timeout)
    return AuthService(proc, grpc_port, health_port)
