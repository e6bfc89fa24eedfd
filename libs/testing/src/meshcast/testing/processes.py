"""Meshcast services as real subprocesses (``python -m meshcast.<service>``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .nats import free_port
from .spawn import spawn
from .timeouts import timeout


@dataclass
class ServiceProcess:
    """One service process with its env; its logs go to `log_path`."""

    module: str
    env: dict[str, str]
    log_path: Path
    health_url: str | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, wait: float = 15.0) -> ServiceProcess:
        env = {**os.environ, **self.env}
        with self.log_path.open("ab") as log:
            self.process = spawn(
                [sys.executable, "-m", self.module], env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        if self.health_url:
            self._wait_healthy(wait)
        return self

    def _wait_healthy(self, wait: float) -> None:
        deadline = time.monotonic() + timeout(wait)
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.module} exited with {self.process.returncode}:\n{self.logs()[-3000:]}")
            try:
                with urllib.request.urlopen(self.health_url or "", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        self.kill()
        raise TimeoutError(f"{self.module} not healthy:\n{self.logs()[-3000:]}")

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
    """A gateway subprocess on a free port (not started)."""
    port = free_port()
    env = {
        "MESHCAST_NATS_URL": ",".join(nats_urls),
        "MESHCAST_GATEWAY_HOST": "127.0.0.1",
        "MESHCAST_GATEWAY_PORT": str(port),
        "MESHCAST_TOKEN_HMAC_SECRET": secret,
        "MESHCAST_NAMESPACES_FILE": str(namespaces_file),
        "MESHCAST_NODE_NAME": name,
        "MESHCAST_DRAIN_SECONDS": "0.5",
        **(extra_env or {}),
    }
    proc = ServiceProcess(
        "meshcast.gateway", env, workdir / f"{name}.log", health_url=f"http://127.0.0.1:{port}/health"
    )
    proc.env["_PORT"] = str(port)
    return proc


def backend_service(
    module: str,
    workdir: Path,
    nats_urls: list[str],
    *,
    name: str,
    namespaces_file: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> ServiceProcess:
    """A history or presence subprocess, ready when its /ready answers (not started)."""
    port = free_port()
    env = {
        "MESHCAST_NATS_URL": ",".join(nats_urls),
        "MESHCAST_HEALTH_HOST": "127.0.0.1",
        "MESHCAST_HEALTH_PORT": str(port),
        **({"MESHCAST_NAMESPACES_FILE": str(namespaces_file)} if namespaces_file else {}),
        **(extra_env or {}),
    }
    return ServiceProcess(module, env, workdir / f"{name}.log", health_url=f"http://127.0.0.1:{port}/ready")


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


def auth_process(
    workdir: Path,
    nats_urls: list[str],
    *,
    secret: str,
    name: str = "auth",
    extra_env: dict[str, str] | None = None,
) -> ServiceProcess:
    """An auth service subprocess (HMAC signing) with its gRPC port in env `_GRPC_PORT` (not started)."""
    grpc_port = free_port()
    env = {
        "MESHCAST_TOKEN_HMAC_SECRET": secret,
        "MESHCAST_GRPC_HOST": "127.0.0.1",
        "MESHCAST_GRPC_PORT": str(grpc_port),
    }
    proc = backend_service("meshcast.auth", workdir, nats_urls, name=name, extra_env={**env, **(extra_env or {})})
    proc.env["_GRPC_PORT"] = str(grpc_port)
    return proc


def ws_url(proc: ServiceProcess) -> str:
    return f"ws://127.0.0.1:{proc.env['_PORT']}/connection/websocket"
