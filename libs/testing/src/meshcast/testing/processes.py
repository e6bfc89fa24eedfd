"""Meshcast services as real subprocesses (``python -m meshcast.<service>``).

Every service binds its ports itself (port 0) and names them in its
"<service> started" log event; the harness reads them back from there, so no
port is picked up front and lost to a race. A restarted process keeps the
ports it had. A process counts as started once its ``/ready`` answers 200:
connected to NATS and serving, not merely alive.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .grpckey import AUTH_API_KEY
from .spawn import spawn
from .timeouts import timeout


@dataclass
class ServiceProcess:
    """One service process with its env; its logs go to `log_path`.

    `started_event` is the log event that carries the bound ports; `port_fields`
    maps each of them (`_PORT`, `_GRPC_PORT`, ...) to that event's field and the
    env variable that pins it on a restart. Once the ports are known,
    `health_url` is `ready_port`'s `/ready` on `host` (unless given), and
    `start` returns when it answers 200.
    """

    module: str
    env: dict[str, str]
    log_path: Path
    health_url: str | None = None
    started_event: str | None = None
    port_fields: dict[str, tuple[str, str]] = field(default_factory=dict)
    ready_port: str | None = None
    host: str = "127.0.0.1"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def argv(self) -> list[str]:
        """The command line (a subclass may wrap it, e.g. in ``ip netns exec``)."""
        return [sys.executable, "-m", self.module]

    def start(self, wait: float = 15.0) -> ServiceProcess:
        env = {**os.environ, **self.env}
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = spawn(self.argv(), env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout(wait)
        if self.started_event is not None:
            self._read_ports(offset, deadline)
        if self.health_url is not None:
            self._wait_ready(self.health_url, deadline)
        return self

    def _read_ports(self, offset: int, deadline: float) -> None:
        while True:
            self._check_running()
            event = self._started(offset)
            if event is not None:
                for key, (log_field, env_var) in self.port_fields.items():
                    port = str(event[log_field])
                    self.env[key] = port
                    self.env[env_var] = port  # a restart binds the same port again
                if self.health_url is None and self.ready_port is not None:
                    self.health_url = f"http://{self.host}:{self.env[self.ready_port]}/ready"
                return
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"{self.module} did not log {self.started_event!r}:\n{self.logs()[-3000:]}")
            time.sleep(0.05)

    def _started(self, offset: int) -> dict[str, Any] | None:
        with self.log_path.open("rb") as log:
            log.seek(offset)
            for line in log:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict) and event.get("event") == self.started_event:
                    return event
        return None

    def _wait_healthy(self, wait: float) -> None:
        """Wait until `health_url` answers 200 (kept for subclasses that spawn themselves)."""
        if self.health_url is not None:
            self._wait_ready(self.health_url, time.monotonic() + timeout(wait))

    def _wait_ready(self, url: str, deadline: float) -> None:
        while True:
            self._check_running()
            try:
                with urllib.request.urlopen(url, timeout=timeout(1)) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"{self.module} not ready:\n{self.logs()[-3000:]}")
            time.sleep(0.05)

    def _check_running(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"{self.module} exited with {self.process.returncode}:\n{self.logs()[-3000:]}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self, wait: float = 15.0) -> int:
        """SIGTERM and wait; kill if it does not stop in time. Returns the exit code."""
        proc = self.process
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout(wait))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout(5))
        self.process = None
        return proc.returncode

    def kill(self) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout(5))


def gateway_process(
    workdir: Path,
    nats_urls: list[str],
    *,
    secret: str,
    namespaces_file: Path,
    name: str = "gateway",
    extra_env: dict[str, str] | None = None,
) -> ServiceProcess:
    """A gateway subprocess (not started); once started, env `_PORT` is its port.

    Lifecycle events are off unless `extra_env` turns them on: a stack without
    the events service has no stream for them."""
    env = {
        "MESHCAST_EVENTS_ENABLED": "false",
        "MESHCAST_NATS_URL": ",".join(nats_urls),
        "MESHCAST_GATEWAY_HOST": "127.0.0.1",
        "MESHCAST_GATEWAY_PORT": "0",
        "MESHCAST_TOKEN_HMAC_SECRET": secret,
        "MESHCAST_NAMESPACES_FILE": str(namespaces_file),
        "MESHCAST_NODE_NAME": name,
        "MESHCAST_DRAIN_SECONDS": "0.5",
        **(extra_env or {}),
    }
    return ServiceProcess(
        "meshcast.gateway",
        env,
        workdir / f"{name}.log",
        started_event="gateway started",
        port_fields={"_PORT": ("port", "MESHCAST_GATEWAY_PORT")},
        ready_port="_PORT",
    )


def backend_service(
    module: str,
    workdir: Path,
    nats_urls: list[str],
    *,
    name: str,
    namespaces_file: Path | None = None,
    extra_env: dict[str, str] | None = None,
    port_fields: dict[str, tuple[str, str]] | None = None,
) -> ServiceProcess:
    """A history, presence, events or auth subprocess, ready when its /ready answers (not started).

    Env `_HEALTH_PORT` is its health port once started."""
    env = {
        "MESHCAST_NATS_URL": ",".join(nats_urls),
        "MESHCAST_HEALTH_HOST": "127.0.0.1",
        "MESHCAST_HEALTH_PORT": "0",
        **({"MESHCAST_NAMESPACES_FILE": str(namespaces_file)} if namespaces_file else {}),
        **(extra_env or {}),
    }
    service = module.rsplit(".", 1)[-1]
    return ServiceProcess(
        module,
        env,
        workdir / f"{name}.log",
        started_event=f"{service} started",
        port_fields={"_HEALTH_PORT": ("health_port", "MESHCAST_HEALTH_PORT"), **(port_fields or {})},
        ready_port="_HEALTH_PORT",
    )


def history_process(
    workdir: Path,
    nats_urls: list[str],
    *,
    namespaces_file: Path,
    name: str = "history",
    extra_env: dict[str, str] | None = None,
) -> ServiceProcess:
    return backend_service(
        "meshcast.history", workdir, nats_urls, name=name, namespaces_file=namespaces_file, extra_env=extra_env
    )


def presence_process(
    workdir: Path, nats_urls: list[str], *, name: str = "presence", extra_env: dict[str, str] | None = None
) -> ServiceProcess:
    return backend_service("meshcast.presence", workdir, nats_urls, name=name, extra_env=extra_env)


def events_process(
    workdir: Path, nats_urls: list[str], *, name: str = "events", extra_env: dict[str, str] | None = None
) -> ServiceProcess:
    """An events service subprocess (not started): ready once it has read the events stream to its end."""
    return backend_service("meshcast.events", workdir, nats_urls, name=name, extra_env=extra_env)


def auth_process(
    workdir: Path,
    nats_urls: list[str],
    *,
    secret: str,
    name: str = "auth",
    api_key: str = AUTH_API_KEY,
    extra_env: dict[str, str] | None = None,
) -> ServiceProcess:
    """An auth service subprocess (HMAC signing; its gRPC API takes `api_key`,
    see `keyed_channel`), not started; once started, env `_GRPC_PORT` is its gRPC port."""
    env = {
        "MESHCAST_API_KEY": api_key,
        "MESHCAST_TOKEN_HMAC_SECRET": secret,
        "MESHCAST_GRPC_HOST": "127.0.0.1",
        "MESHCAST_GRPC_PORT": "0",
    }
    return backend_service(
        "meshcast.auth",
        workdir,
        nats_urls,
        name=name,
        extra_env={**env, **(extra_env or {})},
        port_fields={"_GRPC_PORT": ("grpc_port", "MESHCAST_GRPC_PORT")},
    )


@contextlib.contextmanager
def running(*procs: ServiceProcess, wait: float = 30.0) -> Iterator[tuple[ServiceProcess, ...]]:
    """Start `procs` in order, each ready before the next; on leaving (or when a
    start fails) terminate the started ones in reverse: gateways, listed last,
    stop before the services they depend on."""
    started: list[ServiceProcess] = []
    try:
        for proc in procs:
            proc.start(wait=wait)
            started.append(proc)
        yield procs
    finally:
        for proc in reversed(started):
            proc.terminate()


def ws_url(proc: ServiceProcess) -> str:
    return f"ws://127.0.0.1:{proc.env['_PORT']}/connection/websocket"


def metric_sum(proc: ServiceProcess, name: str, port: str = "_PORT", **labels: str) -> float:
    """The sum of a Prometheus metric's samples (those with every given label)
    on a started service's ``/metrics`` (env `port` names its HTTP port)."""
    url = f"http://127.0.0.1:{proc.env[port]}/metrics"
    with urllib.request.urlopen(url, timeout=timeout(5)) as resp:
        text = resp.read().decode()
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    total = 0.0
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        metric = sample.split("{", 1)[0]
        if metric == name and all(label in sample for label in wanted):
            total += float(value)
    return total


def api_process(
    workdir: Path,
    nats_urls: list[str],
    *,
    namespaces_file: Path,
    api_key: str,
    name: str = "api",
    extra_env: dict[str, str] | None = None,
) -> ServiceProcess:
    """A server API subprocess (not started); once started, env `_HTTP_PORT` and
    `_GRPC_PORT` are its HTTP and gRPC ports. An empty `api_key` runs it insecure."""
    env = {
        "MESHCAST_HTTP_HOST": "127.0.0.1",
        "MESHCAST_HTTP_PORT": "0",
        "MESHCAST_GRPC_HOST": "127.0.0.1",
        "MESHCAST_GRPC_PORT": "0",
        **({"MESHCAST_API_KEY": api_key} if api_key else {"MESHCAST_API_INSECURE": "true"}),
        **(extra_env or {}),
    }
    return backend_service(
        "meshcast.api",
        workdir,
        nats_urls,
        name=name,
        namespaces_file=namespaces_file,
        extra_env=env,
        port_fields={
            "_HTTP_PORT": ("http_port", "MESHCAST_HTTP_PORT"),
            "_GRPC_PORT": ("grpc_port", "MESHCAST_GRPC_PORT"),
        },
    )
