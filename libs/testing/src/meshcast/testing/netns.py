"""Network namespaces for chaos tests: each process on its own link, cut at will.

A `Fabric` is one Linux bridge in the root namespace with a /24 from the RFC
2544 benchmarking range (198.18.0.0/15), and one network namespace per
process attached to it by a veth pair. The root namespace holds the bridge's
``.1``, so tests, balancers and services left in the root namespace reach
every namespace directly. Faults act on one namespace's link, in both
directions: `Namespace.partition` drops every packet (TCP connections stay
open and hang, as behind a failed switch), `Namespace.impair` adds delay and
loss (``tc netem``; loss alone where the kernel has no netem), `Namespace.heal`
removes either.

Everything is named after the run (``mcx<tag>``, the tag carrying this
process's pid) so parallel runs never collide, and `Fabric.close` removes it
all; `sweep_leftovers` removes what runs that died without closing left.
Needs root and ``ip``/``tc`` (Debian's iproute2): `require_tools` fails with
a message that says so.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .nats import nats_server_binary
from .processes import ServiceProcess
from .spawn import spawn
from .timeouts import timeout

# 198.18.0.0/15 as 512 /24 subnets; a run takes one that no interface uses yet.
_RANGE = ipaddress.ip_network("198.18.0.0/15")
_PREFIX = "mcx"  # namespaces mcx<tag>-<name>, bridge mcx<tag>b, veths mcx<tag><n>h / n
_ALIAS = "meshcast-chaos pid="
_CMD_SECONDS = 10.0


class NetnsError(RuntimeError):
    """An ``ip``/``tc`` command failed, or the machine cannot run namespaced tests."""


def require_tools() -> None:
    """Fail clearly when namespaced chaos tests cannot run here."""
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        raise NetnsError(
            f"the chaos suite needs {' and '.join(missing)} from Debian's iproute2 "
            "(apt-get install -y iproute2) and root; not found on PATH"
        )
    if os.geteuid() != 0:
        raise NetnsError("the chaos suite creates network namespaces: it must run as root")


def run(*args: str, check: bool = True) -> str:
    """One ``ip``/``tc`` command, bounded in time; NetnsError with its stderr on failure."""
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout(_CMD_SECONDS), check=False)
    except subprocess.TimeoutExpired as exc:
        raise NetnsError(f"{' '.join(args)}: no answer within {exc.timeout} s") from exc
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _links() -> list[dict[str, Any]]:
    links: list[dict[str, Any]] = json.loads(run("ip", "-j", "-d", "link", "show") or "[]")
    return links


def sweep_leftovers() -> list[str]:
    """Remove namespaces and bridges of chaos runs whose process is gone; their names."""
    removed: list[str] = []
    for link in _links():
        alias = link.get("ifalias", "")
        if not alias.startswith(_ALIAS):
            continue
        pid = int(alias.removeprefix(_ALIAS) or 0)
        if pid and not _pid_alive(pid):
            name = str(link["ifname"])
            tag = name.removeprefix(_PREFIX).removesuffix("b")
            for ns in namespaces():
                if ns.startswith(f"{_PREFIX}{tag}-"):
                    run("ip", "netns", "del", ns, check=False)
                    removed.append(ns)
            run("ip", "link", "del", name, check=False)
            removed.append(name)
    return removed


def namespaces() -> list[str]:
    return [line.split()[0] for line in run("ip", "netns", "list").splitlines() if line.strip()]


def _free_subnet() -> ipaddress.IPv4Network:
    used: set[ipaddress.IPv4Network] = set()
    for entry in json.loads(run("ip", "-j", "addr", "show") or "[]"):
        for addr in entry.get("addr_info", []):
            if addr.get("family") == "inet":
                net = ipaddress.ip_network(f"{addr['local']}/24", strict=False)
                if isinstance(net, ipaddress.IPv4Network):
                    used.add(net)
    candidates = [net for net in _RANGE.subnets(new_prefix=24) if net not in used]
    if not candidates:
        raise NetnsError("every /24 of 198.18.0.0/15 is in use")
    choice = random.choice(candidates)
    assert isinstance(choice, ipaddress.IPv4Network)
    return choice


@dataclass
class Namespace:
    """One network namespace on the fabric: its address and both ends of its link."""

    name: str
    address: str
    host_link: str  # the veth end in the root namespace (on the bridge)
    link: str  # the veth end inside the namespace

    def prefix(self) -> list[str]:
        """The command prefix that runs a program inside this namespace."""
        return ["ip", "netns", "exec", self.name]

    def _tc(self, dev: str, *args: str, check: bool = True) -> str:
        base = ["ip", "netns", "exec", self.name, "tc"] if dev == self.link else ["tc"]
        return run(*base, *args, check=check)

    def _both(self) -> tuple[str, str]:
        return (self.link, self.host_link)

    def _drop_class(self, dev: str, default_drop: bool) -> None:
        """An HTB root whose class 1:20 drops everything (a pfifo of length 0):
        loss and partitions without netem, which not every kernel has."""
        self._tc(dev, "qdisc", "del", "dev", dev, "root", check=False)
        self._tc(
            dev, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "20" if default_drop else "10"
        )
        for cls in ("1:10", "1:20"):
            self._tc(dev, "class", "add", "dev", dev, "parent", "1:", "classid", cls, "htb", "rate", "10gbit")
        self._tc(dev, "qdisc", "add", "dev", dev, "parent", "1:20", "handle", "20:", "pfifo", "limit", "0")

    def partition(self) -> None:
        """Every packet to and from this namespace dropped (connections hang, none is reset)."""
        for dev in self._both():
            self._drop_class(dev, default_drop=True)

    def impair(self, delay_ms: int, jitter_ms: int = 0, loss_percent: float = 0.0) -> str:
        """Delay (with jitter) and random loss on this namespace's link, both directions,
        with netem. A kernel without netem (CONFIG_NET_SCH_NETEM unset) gets the loss
        alone, from a classic-BPF random classifier into a dropping class. Returns
        what was applied."""
        netem = ["delay", f"{delay_ms}ms"]
        if jitter_ms:
            netem += [f"{jitter_ms}ms", "distribution", "normal"]
        if loss_percent:
            netem += ["loss", f"{loss_percent}%"]
        try:
            for dev in self._both():
                self._tc(dev, "qdisc", "replace", "dev", dev, "root", "netem", *netem)
            return f"netem {' '.join(netem)}"
        except NetnsError as exc:
            if "qdisc kind is unknown" not in str(exc):
                raise
        self.heal()
        # ld rand; if A > p * 2^32 no match (pass) else class 1:20 (drop).
        threshold = int(loss_percent / 100 * 0xFFFFFFFF)
        program = f"4,32 0 0 {0xFFFFF038},37 0 1 {threshold},6 0 0 0,6 0 0 {0xFFFFFFFF}"
        for dev in self._both():
            self._drop_class(dev, default_drop=False)
            self._tc(
                dev,
                "filter",
                "add",
                "dev",
                dev,
                "parent",
                "1:",
                "protocol",
                "all",
                "prio",
                "1",
                "bpf",
                "bytecode",
                program,
                "classid",
                "1:20",
            )
        return f"loss {loss_percent}% (no netem in this kernel: no delay)"

    def heal(self) -> None:
        """The link back to normal."""
        for dev in self._both():
            self._tc(dev, "qdisc", "del", "dev", dev, "root", check=False)


@dataclass
class Fabric:
    """A bridge in the root namespace and the namespaces attached to it."""

    tag: str
    subnet: ipaddress.IPv4Network
    bridge: str
    members: list[Namespace] = field(default_factory=list)

    @property
    def host_address(self) -> str:
        return str(self.subnet.network_address + 1)

    @classmethod
    def create(cls) -> Fabric:
        require_tools()
        sweep_leftovers()
        tag = f"{os.getpid():x}{random.randrange(256):02x}"[-8:]
        subnet = _free_subnet()
        fabric = cls(tag, subnet, f"{_PREFIX}{tag}b")
        run("ip", "link", "add", fabric.bridge, "type", "bridge")
        try:
            run("ip", "link", "set", "dev", fabric.bridge, "alias", f"{_ALIAS}{os.getpid()}")
            run("ip", "addr", "add", f"{fabric.host_address}/24", "dev", fabric.bridge)
            run("ip", "link", "set", fabric.bridge, "up")
        except BaseException:
            fabric.close()
            raise
        return fabric

    def add(self, name: str) -> Namespace:
        """A new namespace `name` with the next address of the subnet."""
        index = len(self.members) + 1
        if index > 250:
            raise NetnsError("a fabric holds at most 250 namespaces")
        ns = Namespace(
            name=f"{_PREFIX}{self.tag}-{name}",
            address=str(self.subnet.network_address + 1 + index),
            host_link=f"{_PREFIX}{self.tag}{index}h",
            link=f"{_PREFIX}{self.tag}{index}n",
        )
        run("ip", "netns", "add", ns.name)
        self.members.append(ns)
        run("ip", "link", "add", ns.host_link, "type", "veth", "peer", "name", ns.link, "netns", ns.name)
        run("ip", "link", "set", ns.host_link, "master", self.bridge, "up")
        run("ip", "-n", ns.name, "addr", "add", f"{ns.address}/24", "dev", ns.link)
        run("ip", "-n", ns.name, "link", "set", ns.link, "up")
        run("ip", "-n", ns.name, "link", "set", "lo", "up")
        return ns

    def close(self) -> None:
        """Remove every namespace (their veth pairs go with them) and the bridge."""
        for ns in self.members:
            run("ip", "netns", "del", ns.name, check=False)
        self.members.clear()
        run("ip", "link", "del", self.bridge, check=False)


def ns_service(proc: ServiceProcess, ns: Namespace) -> NamespacedService:
    """`proc` (from gateway_process & co, not started) run inside `ns`, its ports
    asked for on the namespace's address."""
    values = {f.name: getattr(proc, f.name) for f in fields(ServiceProcess) if f.init}
    values["host"] = ns.address
    return NamespacedService(**values, namespace=ns)


@dataclass
class NamespacedService(ServiceProcess):
    """A service process inside a network namespace. ``ip netns exec`` execs the
    service itself: the pid is the service's own, so signals reach it directly."""

    namespace: Namespace | None = None

    def argv(self) -> list[str]:
        prefix = self.namespace.prefix() if self.namespace else []
        return [*prefix, *super().argv()]

    def signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, sig)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class NetnsNatsNode:
    """One nats-server (JetStream, clustered) listening on its namespace's address."""

    namespace: Namespace
    workdir: Path
    name: str
    port: int
    cluster_port: int
    http_port: int
    routes: list[str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.namespace.address}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def _config(self) -> str:
        addr = self.namespace.address
        routes = ", ".join(f'"{r}"' for r in self.routes)
        return (
            f'server_name: "{self.name}"\n'
            f'listen: "{addr}:{self.port}"\n'
            f'http: "{addr}:{self.http_port}"\n'
            f'jetstream {{ store_dir: "{self.workdir / self.name}" }}\n'
            f'cluster {{ name: "meshcast-chaos", listen: "{addr}:{self.cluster_port}", routes: [{routes}] }}\n'
        )

    def start(self, wait: float = 20.0) -> NetnsNatsNode:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / f"{self.name}.conf"
        conf.write_text(self._config())
        with self.log_path.open("ab") as log:
            self.process = spawn(
                [*self.namespace.prefix(), nats_server_binary(), "-c", str(conf)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout(wait)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise NetnsError(f"nats-server {self.name} exited:\n{self.log_path.read_text()[-2000:]}")
            if self.healthz():
                return self
            time.sleep(0.05)
        raise TimeoutError(f"nats-server {self.name} not listening within {timeout(wait)} s")

    def monitor(self, path: str) -> dict[str, Any] | None:
        """A monitoring endpoint's JSON (``/jsz``, ``/routez``...), None when it does not answer."""
        url = f"http://{self.namespace.address}:{self.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout(1)) as resp:
                data: dict[str, Any] = json.loads(resp.read())
                return data
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def healthz(self) -> bool:
        return self.monitor("/healthz?js-enabled-only=true") is not None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the node dies without a goodbye (its store stays for a restart)."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout(5))

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout(5))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout(5))


@dataclass
class NetnsNatsCluster:
    """Routed JetStream nodes, each in its own namespace of `fabric`."""

    nodes: list[NetnsNatsNode]

    @classmethod
    def start(cls, fabric: Fabric, workdir: Path, size: int = 3) -> NetnsNatsCluster:
        from .nats import free_port  # a fresh namespace listens on nothing: any free port is free there

        spaces = [fabric.add(f"n{i + 1}") for i in range(size)]
        cluster_ports = [free_port() for _ in spaces]
        nodes = [
            NetnsNatsNode(
                namespace=ns,
                workdir=workdir,
                name=f"n{i + 1}",
                port=free_port(),
                cluster_port=cluster_ports[i],
                http_port=free_port(),
                routes=[f"nats-route://{other.address}:{cluster_ports[j]}" for j, other in enumerate(spaces) if j != i],
            )
            for i, ns in enumerate(spaces)
        ]
        cluster = cls(nodes)
        try:
            for node in nodes:
                node.process = None
                node.start()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def node(self, name: str) -> NetnsNatsNode:
        [found] = [n for n in self.nodes if n.name == name]
        return found

    def meta_leader(self) -> str | None:
        """The JetStream meta leader's server name, as a running node sees it."""
        for node in self.nodes:
            if node.running:
                jsz = node.monitor("/jsz")
                leader = (jsz or {}).get("meta_cluster", {}).get("leader")
                if leader:
                    return str(leader)
        return None

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                os.kill(node.process.pid, signal.SIGCONT)
            node.stop()
