"""The system under test: every NATS node and every gateway in its own network namespace.

A 3-node JetStream cluster (n1..n3) and three gateways (g1..g3) each get a
namespace on one bridge; history and presence (two instances each, as
deployed) and the test itself (load, balancer, checker) stay in the root
namespace. Clients reach the gateways only through a `TcpBalancer`, as
through a Kubernetes Service.
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client as Nats

from meshcast.bus import Subjects, connect
from meshcast.testing import ServiceProcess, gateway_process, history_process, presence_process
from meshcast.testing.balancer import TcpBalancer
from meshcast.testing.netns import Fabric, Namespace, NamespacedService, NetnsNatsCluster, ns_service

SECRET = "chaos-secret-0123456789abcdef0123456789"
HISTORY_NS = "hist"
LIVE_NS = "live"
NAMESPACES = f"""
allow_anonymous: false
namespaces:
  - name: {HISTORY_NS}
    history_size: 100000
    history_ttl: 3600
    presence: true
    recovery: true
    recovery_max_publications: 100000
    allow_publish: true
  - name: {LIVE_NS}
    presence: true
    allow_publish: true
"""
# Timing of the stack: short enough that a schedule of faults fits in a test run.
PING_INTERVAL = 2.0
HEARTBEAT = 0.5
GATEWAY_TIMEOUT = 3.0
# Presence must agree with the clients this long after a fault is repaired: a
# dead gateway's members expire after GATEWAY_TIMEOUT, a client notices a
# silent gateway after PING_INTERVAL plus its slack and reconnects.
PRESENCE_BOUND = GATEWAY_TIMEOUT + PING_INTERVAL + 3.0 + 4.0
STREAM = Subjects().stream_name(HISTORY_NS)


def _gateway(workdir: Path, ns: Namespace, name: str, nats_urls: list[str], namespaces: Path) -> NamespacedService:
    env = {
        "MESHCAST_NATS_RANDOMIZE": "false",
        "MESHCAST_GATEWAY_HOST": ns.address,
        "MESHCAST_DRAIN_SECONDS": "1",
        "MESHCAST_PING_INTERVAL": str(PING_INTERVAL),
        "MESHCAST_PONG_TIMEOUT": "3",
        "MESHCAST_PRESENCE_HEARTBEAT_INTERVAL": str(HEARTBEAT),
    }
    proc = gateway_process(workdir, nats_urls, secret=SECRET, namespaces_file=namespaces, name=name, extra_env=env)
    return ns_service(proc, ns)


@dataclass
class Stack:
    fabric: Fabric
    cluster: NetnsNatsCluster
    gateways: list[NamespacedService]
    history: list[ServiceProcess]
    presence: list[ServiceProcess]
    balancer: TcpBalancer
    admin: Nats
    started: list[ServiceProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.balancer.port}/connection/websocket"

    def gateway_ns(self, gw: NamespacedService) -> Namespace:
        assert gw.namespace is not None
        return gw.namespace

    def logs(self) -> str:
        """The tail of every service log, for a failure message."""
        return "\n".join(f"--- {p.log_path.name}\n{p.logs()[-1500:]}" for p in self.started)


async def start_stack(workdir: Path) -> Stack:
    """Build and start everything; on failure, remove what was made."""
    fabric = await asyncio.to_thread(Fabric.create)
    try:
        return await _start_on(fabric, workdir)
    except BaseException:
        await asyncio.to_thread(fabric.close)
        raise


async def _start_on(fabric: Fabric, workdir: Path) -> Stack:
    namespaces = workdir / "namespaces.yaml"
    namespaces.write_text(NAMESPACES)
    cluster = await asyncio.to_thread(NetnsNatsCluster.start, fabric, workdir / "nats")
    urls = cluster.urls
    started: list[ServiceProcess] = []
    try:
        history = [
            history_process(
                workdir,
                urls,
                namespaces_file=namespaces,
                name=f"history-{i + 1}",
                extra_env={"MESHCAST_HISTORY_REPLICAS": "3"},
            )
            for i in range(2)
        ]
        presence = [
            presence_process(
                workdir,
                urls,
                name=f"presence-{i + 1}",
                extra_env={
                    "MESHCAST_GATEWAY_TIMEOUT": str(GATEWAY_TIMEOUT),
                    "MESHCAST_SWEEP_INTERVAL": "0.2",
                    "MESHCAST_STARTUP_SYNC_WAIT": "0.5",
                    "MESHCAST_LEASE_REPLICAS": "3",
                },
            )
            for i in range(2)
        ]
        spaces = [fabric.add(f"g{i + 1}") for i in range(3)]
        # Gateway i prefers node i (then the others): each node carries one gateway.
        gateways = [
            _gateway(workdir, ns, f"g{i + 1}", [urls[i], *urls[:i], *urls[i + 1 :]], namespaces)
            for i, ns in enumerate(spaces)
        ]
        # History first: it creates the streams the gateways' subscribes read.
        await _start_all(history[:1], started, wait=60)
        await _start_all([*history[1:], *presence, *gateways], started, wait=60)
        backends = [(gw.namespace.address, int(gw.env["_PORT"])) for gw in gateways if gw.namespace]
        balancer = await TcpBalancer(backends, rotate=True).start()
        admin = await connect(urls, name="chaos-backend")
        return Stack(fabric, cluster, gateways, history, presence, balancer, admin, started)
    except BaseException:
        await asyncio.to_thread(_stop_all, started, cluster)
        raise


async def _start_all(procs: list[ServiceProcess], started: list[ServiceProcess], wait: float) -> None:
    started.extend(procs)
    await asyncio.gather(*(asyncio.to_thread(p.start, wait) for p in procs))


def _stop_all(started: list[ServiceProcess], cluster: NetnsNatsCluster) -> None:
    for proc in started:
        proc.terminate(wait=5)
    cluster.stop()


async def stop_stack(stack: Stack) -> None:
    """Stop everything and remove every namespace and link, whatever state faults left."""
    try:
        await stack.admin.close()
        await stack.balancer.stop()
    finally:
        try:
            for ns in stack.fabric.members:
                await asyncio.to_thread(ns.heal)
            for gw in stack.gateways:
                gw.signal(signal.SIGCONT)
            await asyncio.to_thread(_stop_all, stack.started, stack.cluster)
        finally:
            await asyncio.to_thread(stack.fabric.close)
