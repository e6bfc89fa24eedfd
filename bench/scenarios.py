"""Run one scenario against one target on a fresh stack and measure it.

Each run starts its own nats-server (and, for the gateway target, its own
gateway; for the storm scenario also its own history service, started before
the gateway; for the presence scenario a presence service and two or more
gateways; for the api scenario a server API process, `bench.apibench`; for the
control scenario the auth service and two gateways, `bench.controlbench`), so
memory and CPU figures of one run never leak into the next.
Subscriber workers and the publisher are separate 'spawn' processes; the
orchestrator only coordinates them and samples CPU/RSS with psutil.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from array import array
from collections.abc import Callable, MutableSequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import psutil

from bench.apimodel import ApiFigures, ApiPlan
from bench.controlmodel import ControlFigures, ControlPlan
from bench.loadgen import (
    BASELINE,
    CLOSED_LOOP,
    FIXED_RATE,
    GATEWAY,
    Endpoint,
    PublisherJob,
    PublisherReport,
    ReadyInfo,
    SubscriberJob,
    SubscriberReport,
    publisher_main,
    subscriber_main,
)
from bench.presence import (
    PRESENCE,
    STATS,
    ConvergePlan,
    JoinReport,
    ObserverJob,
    ObserverReport,
    PresenceJob,
    QueryPlan,
    QueryReport,
    presence_observer_main,
    presence_worker_main,
)
from bench.stack import (
    PRESENCE_NAMESPACE,
    PRESENCE_NAMESPACES_YAML,
    STORM_NAMESPACE,
    StackError,
    listen_overflows,
    prometheus_values,
    start_gateway,
    start_history,
    start_nats,
    start_presence,
    storm_namespaces_yaml,
    tail,
    tree_cpu_seconds,
    tree_rss,
    write_namespaces,
)
from bench.storm import (
    CATEGORIES,
    StormJob,
    StormPublishJob,
    StormPublishReport,
    StormReport,
    storm_publisher_main,
    storm_worker_main,
)

IDLE = "idle"
STORM = "storm"
NO_RECOVERY = "nats-server websocket has no recovery: no baseline for this scenario"
PRESENCE_MODE = "presence"
NO_PRESENCE = "nats-server has no presence: no baseline for this scenario"
API_MODE = "api"
NO_API = "nats-server has no server API: no baseline for this scenario"
CONTROL_MODE = "control"
NO_CONTROL = "nats-server has no auth service: no baseline for this scenario"
# Scenarios that exist for the gateway only; their baseline row is skipped.
GATEWAY_ONLY = {STORM: NO_RECOVERY, PRESENCE_MODE: NO_PRESENCE, API_MODE: NO_API, CONTROL_MODE: NO_CONTROL}
# Lead time between sending ``storm`` to the workers and the common start.
_STORM_LEAD_S = 0.5
_CTX = multiprocessing.get_context("spawn")


class LoadgenError(RuntimeError):
    """A load-generator process failed or did not answer in time."""


class ServiceStartError(RuntimeError):
    """A service next to the gateway did not start (the gateway itself is not at fault)."""

    service = "a service"


class HistoryStartError(ServiceStartError):
    service = "history service"


class PresenceStartError(ServiceStartError):
    service = "presence service"


class ApiStartError(ServiceStartError):
    service = "server API"


class AuthStartError(ServiceStartError):
    service = "auth service"


@dataclass(frozen=True)
class Goal:
    """A benchmark target for one metric of a scenario (reported, never asserted)."""

    metric: str
    op: str
    value: float
    label: str

    def met(self, measured: float | None) -> bool | None:
        if measured is None:
            return None
        if self.op == ">=":
            return measured >= self.value
        if self.op == "<":
            return measured < self.value
        return measured <= self.value


@dataclass(frozen=True)
class PresencePlan:
    """Sizes and secondary targets of the presence scenario."""

    gateways: int = 2
    users: int = 10_000
    window_s: float = 10.0
    stats_requests: int = 500
    presence_requests: int = 50
    query_concurrency: int = 1
    presence_p99_ms: float = 100.0
    converge_timeout: float = 30.0
    query_timeout: float = 120.0


@dataclass(frozen=True)
class Scenario:
    name: str
    connections: int
    channels: int
    mode: str
    rate: float
    goal: Goal
    publications: int = 0
    presence: PresencePlan | None = None
    api: ApiPlan | None = None
    control: ControlPlan | None = None
    # The subscribers' channels are `<namespace>:<index>`.
    namespace: str = "bench"


@dataclass(frozen=True)
class Options:
    workers: int
    concurrency: int
    connect_timeout: float
    command_timeout: float
    warmup: float
    duration: float
    window: int
    ack_window: int
    drain_timeout: float
    drain_idle: float
    settle: float
    idle_hold: float
    saturation: float
    max_samples: int
    nats_binary: str
    nats_timeout: float
    gateway_argv: list[str]
    gateway_timeout: float
    secret: str
    history_argv: list[str] = field(default_factory=list)
    history_timeout: float = 60.0
    storm_timeout: float = 30.0
    storm_concurrency: int = 0
    presence_argv: list[str] = field(default_factory=list)
    presence_timeout: float = 60.0
    api_argv: list[str] = field(default_factory=list)
    api_timeout: float = 60.0
    auth_argv: list[str] = field(default_factory=list)
    auth_timeout: float = 60.0
    # Extra environment of every gateway (the lifted per-IP and per-connection limits).
    gateway_env: dict[str, str] = field(default_factory=dict)


@dataclass
class StormFigures:
    """What the storm scenario measured beyond the common columns."""

    clients: int
    subscribed: int
    publications: int
    published: int = 0
    publish_seconds: float = 0.0
    unclosed: int = 0
    verified: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    recovered_publications: int = 0
    window_s: float = 0.0
    first_error: str = ""

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


@dataclass
class CpuWindow:
    """CPU over one measured phase, in % of one core (host: % of all cores)."""

    name: str
    seconds: float
    servers: dict[str, float]
    loadgen: dict[str, float]
    host: float
    other: float


@dataclass
class LatencyFigures:
    """Timed presence or presence_stats requests."""

    kind: str
    requested: int
    sent: int = 0
    answered: int = 0
    errors: int = 0
    mismatches: int = 0
    seconds: float = 0.0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    # gateway name -> (answers, p50 ms, p99 ms)
    per_gateway: dict[str, tuple[int, float, float]] = field(default_factory=dict)
    first_error: str = ""


@dataclass
class PresenceFigures:
    """What the presence scenario measured beyond the common columns."""

    clients: int
    users: int
    gateways: int
    window_s: float
    subscribed: int = 0
    per_gateway: list[int] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    actual_window_s: float = 0.0
    max_lag_s: float = 0.0
    all_replies_s: float = 0.0
    subscribe_ms: tuple[float, float, float, float] | None = None  # p50, p95, p99, max
    expected_clients: int = 0
    expected_users: int = 0
    observer: ObserverReport | None = None
    converge_after_replies_s: float | None = None
    converge_after_start_s: float | None = None
    joins_after_replies_s: float | None = None
    # Gateway snapshots the presence service applied / join events it applied, during the storm.
    syncs: int | None = None
    join_events: int | None = None
    presence_rss_before: int = 0
    presence_rss: int = 0
    gateway_rss: dict[str, int] = field(default_factory=dict)
    stats: LatencyFigures | None = None
    presence: LatencyFigures | None = None
    windows: list[CpuWindow] = field(default_factory=list)
    first_error: str = ""

    @property
    def converged(self) -> bool:
        return self.observer is not None and self.observer.converged_ns > 0

    @property
    def joins_seen(self) -> int:
        return 0 if self.observer is None else self.observer.distinct_joins


@dataclass
class RunResult:
    scenario: str
    target: str
    connections: int
    failure: str = ""
    connected: int = 0
    connect_seconds: float = 0.0
    deliveries_per_s: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    rss_per_conn_kib: float | None = None
    published: int = 0
    delivered: int = 0
    expected: int = 0
    disconnects: int = 0
    errors: int = 0
    first_error: str = ""
    server_cpu: float = 0.0
    nats_cpu: float | None = None
    host_cpu: float = 0.0
    other_cpu: float = 0.0
    listen_overflows: int = 0
    pings: int = 0
    loadgen_cpu: dict[str, float] = field(default_factory=dict)
    saturated: bool = False
    start_failed: bool = False
    # Not run on purpose (e.g. no baseline exists); not a failure.
    skipped: str = ""
    # Non-empty: the goal is missed whatever the metric says (e.g. a client not recovered).
    goal_miss: str = ""
    history_cpu: float | None = None
    recovered_all_s: float | None = None
    storm: StormFigures | None = None
    presence: PresenceFigures | None = None
    requests_per_s: float | None = None
    api: ApiFigures | None = None
    control: ControlFigures | None = None

    def metric(self, name: str) -> float | None:
        value = getattr(self, name)
        return None if value is None else float(value)


# ---------------------------------------------------------------- children


@dataclass
class Child:
    """A load-generator process and the parent end of its control pipe."""

    name: str
    process: BaseProcess
    pipe: Connection

    def send(self, kind: str, payload: object = None) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.pipe.send((kind, payload))

    def recv(self, kind: str, timeout: float) -> Any:
        if not self.pipe.poll(max(0.0, timeout)):
            raise LoadgenError(f"{self.name}: no '{kind}' within {timeout:.0f}s")
        try:
            got, payload = self.pipe.recv()
        except EOFError as exc:
            raise LoadgenError(f"{self.name}: exited (code {self.process.exitcode})") from exc
        if got == "failed":
            raise LoadgenError(f"{self.name}: {payload}")
        if got != kind:
            raise LoadgenError(f"{self.name}: expected '{kind}', got '{got}'")
        return payload

    def stop(self) -> None:
        self.send("close")
        self.process.join(5)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(2)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(2)
        self.pipe.close()


def start_child(stack: ExitStack, name: str, target: Callable[..., None], job: object, counters: object) -> Child:
    parent_end, child_end = _CTX.Pipe()
    process = _CTX.Process(target=target, args=(job, child_end, counters), name=name, daemon=True)
    process.start()
    child_end.close()
    child = Child(name, process, parent_end)
    stack.callback(child.stop)
    return child


def _channel_name(index: int, namespace: str = "bench") -> str:
    return f"{namespace}:{index}"


def _drain_budget(scn: Scenario) -> float:
    """Extra seconds a subscriber may wait for its next order (the api scenario drains between phases)."""
    return 0.0 if scn.api is None else scn.api.drain_timeout


def _subscriber_jobs(scn: Scenario, endpoint: Endpoint, opts: Options) -> list[SubscriberJob]:
    workers = max(1, min(opts.workers, scn.connections))
    return [
        SubscriberJob(
            endpoint=endpoint,
            slot=slot,
            channels=[_channel_name(i % scn.channels, scn.namespace) for i in range(slot, scn.connections, workers)],
            concurrency=opts.concurrency,
            connect_timeout=opts.connect_timeout,
            command_timeout=opts.command_timeout,
            control_timeout=opts.connect_timeout + opts.warmup + opts.duration + 120 + _drain_budget(scn),
            max_samples=opts.max_samples,
        )
        for slot in range(workers)
    ]


def collect_ready(children: list[Child], timeout: float) -> list[ReadyInfo]:
    deadline = time.monotonic() + timeout
    infos: list[ReadyInfo] = []
    for child in children:
        info: ReadyInfo = child.recv("ready", deadline - time.monotonic())
        infos.append(info)
    return infos


# ---------------------------------------------------------------- measuring


@dataclass
class CpuSnapshot:
    wall: float
    loadgen: dict[str, float]
    others: dict[str, float]
    host_busy: float


_HOST_BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq", "steal")


def cpu_snapshot(children: list[Child], others: dict[str, int]) -> CpuSnapshot:
    """CPU seconds so far of the load generators, the named servers and the host."""
    loadgen = {c.name: tree_cpu_seconds(c.process.pid) if c.process.pid else 0.0 for c in children}
    measured = {name: tree_cpu_seconds(pid) for name, pid in others.items() if name != "bench"}
    own = psutil.Process().cpu_times()
    measured["bench"] = float(own.user) + float(own.system)
    host = psutil.cpu_times()
    busy = sum(float(getattr(host, name, 0.0)) for name in _HOST_BUSY_FIELDS)
    return CpuSnapshot(time.monotonic(), loadgen, measured, busy)


def _apply_cpu(result: RunResult, before: CpuSnapshot, after: CpuSnapshot, saturation: float) -> None:
    """Turn two snapshots into percentages of one core over the window."""
    wall = max(1e-9, after.wall - before.wall)

    def pct(now: float, then: float) -> float:
        return 100.0 * (now - then) / wall

    result.loadgen_cpu = {name: pct(after.loadgen.get(name, 0.0), sec) for name, sec in before.loadgen.items()}
    others = {name: pct(after.others.get(name, 0.0), sec) for name, sec in before.others.items()}
    result.server_cpu = others.get("server", 0.0)
    result.nats_cpu = others.get("nats")
    result.history_cpu = others.get("history")
    host = pct(after.host_busy, before.host_busy)
    result.host_cpu = host / (psutil.cpu_count() or 1)
    result.other_cpu = host - sum(result.loadgen_cpu.values()) - sum(others.values())
    result.saturated = any(value > saturation for value in result.loadgen_cpu.values())


def percentile(sorted_values: list[int], pct: float) -> int:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, min(len(sorted_values), int(-(-pct * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


def _apply_latency(result: RunResult, reports: list[SubscriberReport]) -> None:
    merged: array[int] = array("q")
    for report in reports:
        merged.extend(report.latencies)
    if not merged:
        return
    values = sorted(merged)
    result.p50_ms = percentile(values, 50) / 1e6
    result.p95_ms = percentile(values, 95) / 1e6
    result.p99_ms = percentile(values, 99) / 1e6
    result.max_ms = values[-1] / 1e6


def _expected_total(published: int, channels: int, per_channel: dict[str, int]) -> int:
    """Deliveries owed for ``published`` round-robin publications."""
    total = 0
    for index in range(channels):
        pubs = published // channels + (1 if index < published % channels else 0)
        total += pubs * per_channel.get(_channel_name(index), 0)
    return total


def drain(counters: MutableSequence[int], expected: int, opts: Options, timeout: float | None = None) -> None:
    """Wait until all deliveries arrived, progress stalls, or the timeout (default ``opts.drain_timeout``) hits."""
    deadline = time.monotonic() + (opts.drain_timeout if timeout is None else timeout)
    last_total = -1
    last_change = time.monotonic()
    while time.monotonic() < deadline:
        total = sum(counters)
        if total >= expected:
            return
        if total != last_total:
            last_total, last_change = total, time.monotonic()
        elif time.monotonic() - last_change > opts.drain_idle:
            return
        time.sleep(0.02)


# ---------------------------------------------------------------- phases


@dataclass
class Run:
    scn: Scenario
    opts: Options
    stack: ExitStack
    result: RunResult
    server_pid: int = 0
    watched: dict[str, int] = field(default_factory=dict)
    endpoint: Endpoint | None = None
    subscribers: list[Child] = field(default_factory=list)
    counters: MutableSequence[int] = field(default_factory=list)
    per_channel: dict[str, int] = field(default_factory=dict)


def _start_servers(run: Run, workdir: Path) -> Callable[[], str]:
    """Start nats-server (+ history service + gateway); return a liveness check giving a failure text."""
    opts = run.opts
    nats_srv = start_nats(opts.nats_binary, workdir, opts.nats_timeout)
    run.stack.callback(nats_srv.proc.stop)
    procs = [nats_srv.proc]
    if run.result.target != GATEWAY:
        run.server_pid = nats_srv.proc.pid
        run.endpoint = Endpoint(BASELINE, nats_srv.ws_url, nats_srv.nats_url, opts.secret)
    else:
        namespaces = None
        if run.scn.mode == STORM:
            namespaces = write_namespaces(workdir, storm_namespaces_yaml(run.scn.publications))
            try:
                history = start_history(opts.history_argv, nats_srv.nats_url, namespaces, workdir, opts.history_timeout)
            except StackError as exc:
                raise HistoryStartError(str(exc)) from exc
            run.stack.callback(history.proc.stop)
            run.watched["history"] = history.proc.pid
            procs.append(history.proc)
        gateway = start_gateway(
            opts.gateway_argv,
            nats_srv.nats_url,
            opts.secret,
            workdir,
            opts.gateway_timeout,
            namespaces,
            extra_env=opts.gateway_env,
        )
        run.stack.callback(gateway.proc.stop)
        run.server_pid = gateway.proc.pid
        run.watched["nats"] = nats_srv.proc.pid
        run.endpoint = Endpoint(GATEWAY, gateway.ws_url, nats_srv.nats_url, opts.secret)
        procs.append(gateway.proc)

    run.watched["server"] = run.server_pid

    def check() -> str:
        died = [f"{p.name} died (code {p.popen.returncode}):\n{tail(p.log_path)}" for p in procs if not p.alive()]
        return "\n".join(died)

    return check


def connect_subscribers(run: Run) -> None:
    assert run.endpoint is not None
    time.sleep(run.opts.settle)
    rss_before = tree_rss(run.server_pid)
    overflows_before = listen_overflows()
    jobs = _subscriber_jobs(run.scn, run.endpoint, run.opts)
    shared = _CTX.Array("q", len(jobs), lock=False)
    run.counters = shared
    run.subscribers = [start_child(run.stack, f"sub{job.slot}", subscriber_main, job, shared) for job in jobs]
    infos = collect_ready(run.subscribers, run.opts.connect_timeout + 30)
    result = run.result
    result.listen_overflows = listen_overflows() - overflows_before
    result.connected = sum(i.connected for i in infos)
    result.connect_seconds = max(i.seconds for i in infos)
    errors = [i.first_error for i in infos if i.first_error]
    if errors:
        result.first_error = errors[0]
    for info in infos:
        for channel, count in info.per_channel.items():
            run.per_channel[channel] = run.per_channel.get(channel, 0) + count
    time.sleep(run.opts.settle)
    if result.connected:
        result.rss_per_conn_kib = (tree_rss(run.server_pid) - rss_before) / result.connected / 1024


def collect_reports(run: Run) -> list[SubscriberReport]:
    for child in run.subscribers:
        child.send("stop")
    reports: list[SubscriberReport] = [c.recv("report", 60) for c in run.subscribers]
    result = run.result
    result.disconnects = sum(r.disconnects for r in reports)
    result.pings = sum(r.pings for r in reports)
    result.errors = sum(r.errors for r in reports)
    first = next((r.first_error for r in reports if r.first_error), "")
    result.first_error = result.first_error or first
    return reports


def _measure_idle(run: Run) -> None:
    before = cpu_snapshot(run.subscribers, run.watched)
    time.sleep(run.opts.idle_hold)
    _apply_cpu(run.result, before, cpu_snapshot(run.subscribers, run.watched), run.opts.saturation)
    collect_reports(run)


def _publisher_job(run: Run) -> PublisherJob:
    assert run.endpoint is not None
    opts = run.opts
    return PublisherJob(
        endpoint=run.endpoint,
        channels=[_channel_name(i) for i in range(run.scn.channels)],
        mode=run.scn.mode,
        rate=run.scn.rate,
        window=opts.window,
        ack_window=opts.ack_window,
        subscribers=max(1, run.result.connected // max(1, run.scn.channels)),
        warmup=opts.warmup,
        duration=opts.duration,
        command_timeout=opts.command_timeout,
        control_timeout=opts.warmup + opts.duration + 120,
    )


def _measure_traffic(run: Run) -> None:
    opts = run.opts
    publisher = start_child(run.stack, "pub", publisher_main, _publisher_job(run), run.counters)
    publisher.recv("ready", opts.connect_timeout)
    children = [*run.subscribers, publisher]
    record_from = time.time_ns() + int(opts.warmup * 1e9)
    for child in children:
        child.send("start", record_from)
    time.sleep(max(0.0, (record_from - time.time_ns()) / 1e9))
    before = cpu_snapshot(children, run.watched)
    pub_report: PublisherReport = publisher.recv("report", opts.duration + opts.command_timeout + 30)
    expected_all = _expected_total(pub_report.published, run.scn.channels, run.per_channel)
    drain(run.counters, expected_all, opts)
    _apply_cpu(run.result, before, cpu_snapshot(children, run.watched), opts.saturation)
    _summarise(run, pub_report, collect_reports(run), record_from)


def _summarise(run: Run, pub: PublisherReport, reports: list[SubscriberReport], record_from: int) -> None:
    result = run.result
    result.published = pub.measured
    result.delivered = sum(r.measured for r in reports)
    result.expected = sum(count * run.per_channel.get(ch, 0) for ch, count in pub.per_channel.items())
    result.errors += pub.errors
    result.first_error = result.first_error or pub.first_error
    last_recv = max((r.last_recv_ns for r in reports), default=0)
    if last_recv > record_from and result.delivered:
        result.deliveries_per_s = result.delivered / ((last_recv - record_from) / 1e9)
    _apply_latency(result, reports)


# ---------------------------------------------------------------- storm


def _storm_jobs(run: Run) -> list[StormJob]:
    assert run.endpoint is not None
    opts, scn = run.opts, run.scn
    workers = max(1, min(opts.workers, scn.connections))
    per_worker = [
        scn.connections // workers + (1 if slot < scn.connections % workers else 0) for slot in range(workers)
    ]
    return [
        StormJob(
            endpoint=run.endpoint,
            slot=slot,
            channel=f"{STORM_NAMESPACE}:0",
            clients=count,
            publications=scn.publications,
            concurrency=opts.concurrency,
            storm_concurrency=opts.storm_concurrency,
            connect_timeout=opts.connect_timeout,
            command_timeout=opts.command_timeout,
            storm_timeout=opts.storm_timeout,
            control_timeout=opts.connect_timeout + opts.storm_timeout + opts.command_timeout * 4 + 120,
        )
        for slot, count in enumerate(per_worker)
    ]


def _storm_subscribe(run: Run, jobs: list[StormJob]) -> StormFigures:
    """Phase 1: every client connects and subscribes (recording epoch/offset)."""
    overflows_before = listen_overflows()
    run.subscribers = [start_child(run.stack, f"sub{job.slot}", storm_worker_main, job, None) for job in jobs]
    infos = collect_ready(run.subscribers, run.opts.connect_timeout + 30)
    result = run.result
    result.listen_overflows = listen_overflows() - overflows_before
    result.connected = sum(i.connected for i in infos)
    result.connect_seconds = max(i.seconds for i in infos)
    result.first_error = next((i.first_error for i in infos if i.first_error), "")
    return StormFigures(clients=run.scn.connections, subscribed=result.connected, publications=run.scn.publications)


def _storm_disconnect_and_publish(run: Run, storm: StormFigures) -> None:
    """Phase 2: every client closes its socket, then the publications are stored (all acked)."""
    opts = run.opts
    for child in run.subscribers:
        child.send("disconnect")
    storm.unclosed = sum(int(c.recv("closed", opts.command_timeout + 30)) for c in run.subscribers)
    time.sleep(opts.settle)
    assert run.endpoint is not None
    publish_timeout = opts.command_timeout + run.scn.publications / 100.0
    job = StormPublishJob(
        endpoint=run.endpoint,
        channel=f"{STORM_NAMESPACE}:0",
        publications=run.scn.publications,
        ack_window=opts.ack_window,
        command_timeout=opts.command_timeout,
        publish_timeout=publish_timeout,
        control_timeout=publish_timeout + 120,
    )
    publisher = start_child(run.stack, "pub", storm_publisher_main, job, None)
    report: StormPublishReport = publisher.recv("report", opts.connect_timeout + publish_timeout + 30)
    publisher.stop()
    storm.published, storm.publish_seconds = report.acked, report.seconds
    if report.acked != run.scn.publications:
        raise LoadgenError(
            f"storm publisher: {report.acked}/{run.scn.publications} publications acknowledged; {report.first_error}"
        )


def _storm_reconnect(run: Run, storm: StormFigures) -> list[StormReport]:
    """Phase 3: all clients reconnect at one instant and recover; CPU is sampled over it."""
    opts = run.opts
    start_ns = time.time_ns() + int(_STORM_LEAD_S * 1e9)
    for child in run.subscribers:
        child.send("storm", start_ns)
    time.sleep(max(0.0, (start_ns - time.time_ns()) / 1e9 - 0.01))
    before = cpu_snapshot(run.subscribers, run.watched)
    reports: list[StormReport] = [c.recv("report", opts.storm_timeout + 30) for c in run.subscribers]
    after = cpu_snapshot(run.subscribers, run.watched)
    _apply_cpu(run.result, before, after, opts.saturation)
    storm.window_s = after.wall - before.wall
    return reports


def _summarise_storm(run: Run, storm: StormFigures, reports: list[StormReport]) -> None:
    result = run.result
    result.storm = storm
    storm.failures = {name: sum(r.failures.get(name, 0) for r in reports) for name in CATEGORIES}
    storm.recovered_publications = sum(r.recovered_publications for r in reports)
    storm.first_error = next((r.first_error for r in reports if r.first_error), "")
    done: array[int] = array("q")
    for report in reports:
        done.extend(report.done_ns)
    storm.verified = len(done)
    result.published = storm.published
    result.delivered = storm.recovered_publications
    result.expected = storm.subscribed * storm.publications
    result.errors = storm.failed
    result.first_error = result.first_error or storm.first_error
    if done:
        values = sorted(done)
        result.p50_ms = percentile(values, 50) / 1e6
        result.p95_ms = percentile(values, 95) / 1e6
        result.p99_ms = percentile(values, 99) / 1e6
        result.max_ms = values[-1] / 1e6
        if values[-1] > 0:
            result.deliveries_per_s = storm.recovered_publications / (values[-1] / 1e9)
    missing = storm.clients - storm.verified
    if missing:
        result.goal_miss = f"{missing} of {storm.clients} clients not recovered"
    elif done:
        result.recovered_all_s = max(done) / 1e9


def _measure_storm(run: Run) -> None:
    storm = _storm_subscribe(run, _storm_jobs(run))
    if run.result.connected == 0:
        run.result.failure = f"no connection succeeded: {run.result.first_error}"
        return
    _storm_disconnect_and_publish(run, storm)
    _summarise_storm(run, storm, _storm_reconnect(run, storm))


# ---------------------------------------------------------------- presence

# Lead time between sending ``join`` to the workers and the first connect.
_PRESENCE_LEAD_S = 1.0
_POLL_S = 0.02
# After convergence: stop waiting for missing join pushes when none came this long.
_JOIN_IDLE_S = 3.0


@dataclass
class _PresenceStack:
    urls: list[str]
    gateways: dict[str, int]  # name -> pid
    presence_pid: int
    metrics_url: str

    def presence_counters(self) -> dict[str, float]:
        """The presence service's snapshot and event counters (empty when /metrics does not answer)."""
        values = prometheus_values(self.metrics_url, 2.0)
        return {key: values[key] for key in _PRESENCE_COUNTERS if key in values}


_SYNCS = "meshcast_presence_syncs_total"
_JOIN_EVENTS = 'meshcast_presence_events_total{kind="join"}'
_PRESENCE_COUNTERS = (_SYNCS, _JOIN_EVENTS)


def _start_presence_stack(run: Run, workdir: Path) -> tuple[_PresenceStack, Callable[[], str]]:
    """nats-server, the presence service, then the gateways (all on the same NATS)."""
    opts, plan = run.opts, run.scn.presence
    assert plan is not None
    nats_srv = start_nats(opts.nats_binary, workdir, opts.nats_timeout)
    run.stack.callback(nats_srv.proc.stop)
    try:
        service = start_presence(opts.presence_argv, nats_srv.nats_url, workdir, opts.presence_timeout)
    except StackError as exc:
        raise PresenceStartError(str(exc)) from exc
    run.stack.callback(service.proc.stop)
    procs = [nats_srv.proc, service.proc]
    namespaces = write_namespaces(workdir, PRESENCE_NAMESPACES_YAML)
    ps = _PresenceStack([], {}, service.proc.pid, service.metrics_url)
    for index in range(plan.gateways):
        name = f"gw{index}"
        gateway = start_gateway(
            opts.gateway_argv,
            nats_srv.nats_url,
            opts.secret,
            workdir,
            opts.gateway_timeout,
            namespaces,
            name,
            extra_env=opts.gateway_env,
        )
        run.stack.callback(gateway.proc.stop)
        procs.append(gateway.proc)
        ps.urls.append(gateway.ws_url)
        ps.gateways[name] = gateway.proc.pid
    run.server_pid = service.proc.pid
    run.watched = {"presence": service.proc.pid, **ps.gateways, "nats": nats_srv.proc.pid}

    def check() -> str:
        died = [f"{p.name} died (code {p.popen.returncode}):\n{tail(p.log_path)}" for p in procs if not p.alive()]
        return "\n".join(died)

    return ps, check


def cpu_window(name: str, before: CpuSnapshot, after: CpuSnapshot) -> CpuWindow:
    wall = max(1e-9, after.wall - before.wall)

    def pct(now: float, then: float) -> float:
        return 100.0 * (now - then) / wall

    loadgen = {n: pct(after.loadgen.get(n, 0.0), sec) for n, sec in before.loadgen.items()}
    servers = {n: pct(after.others.get(n, 0.0), sec) for n, sec in before.others.items()}
    host = pct(after.host_busy, before.host_busy)
    other = host - sum(loadgen.values()) - sum(servers.values())
    return CpuWindow(name, wall, servers, loadgen, host / (psutil.cpu_count() or 1), other)


def ms_quartet(values: list[int]) -> tuple[float, float, float, float]:
    """p50, p95, p99, max in ms of ascending ns values."""
    return (
        percentile(values, 50) / 1e6,
        percentile(values, 95) / 1e6,
        percentile(values, 99) / 1e6,
        values[-1] / 1e6,
    )


def _presence_jobs(run: Run, ps: _PresenceStack) -> list[PresenceJob]:
    opts, scn, plan = run.opts, run.scn, run.scn.presence
    assert plan is not None
    workers = max(1, min(opts.workers, scn.connections))
    return [
        PresenceJob(
            gateway_urls=ps.urls,
            secret=opts.secret,
            channel=f"{PRESENCE_NAMESPACE}:0",
            slot=slot,
            workers=workers,
            total=scn.connections,
            users=max(1, min(plan.users, scn.connections)),
            window_s=plan.window_s,
            max_in_flight=opts.concurrency,
            connect_timeout=opts.connect_timeout,
            command_timeout=opts.command_timeout,
            control_timeout=plan.window_s + opts.connect_timeout + plan.converge_timeout + 2 * plan.query_timeout + 300,
        )
        for slot in range(workers)
    ]


def _summarise_joins(fig: PresenceFigures, reports: list[JoinReport], start_ns: int) -> None:
    fig.subscribed = sum(sum(r.per_gateway) for r in reports)
    fig.per_gateway = [sum(r.per_gateway[g] for r in reports) for g in range(fig.gateways)]
    failures: dict[str, int] = {}
    for report in reports:
        for kind, count in report.failures.items():
            failures[kind] = failures.get(kind, 0) + count
    fig.failures = failures
    fig.first_error = next((r.first_error for r in reports if r.first_error), "")
    starts = [r.first_start_ns for r in reports if r.first_start_ns]
    if starts:
        fig.actual_window_s = (max(r.last_start_ns for r in reports) - min(starts)) / 1e9
    fig.max_lag_s = max((r.max_lag_ns for r in reports), default=0) / 1e9
    last_reply = max((r.last_reply_ns for r in reports), default=0)
    if last_reply:
        fig.all_replies_s = (last_reply - start_ns) / 1e9
    took: array[int] = array("q")
    for report in reports:
        took.extend(report.took_ns)
    if took:
        fig.subscribe_ms = ms_quartet(sorted(took))
    users: set[int] = set()
    for report in reports:
        users.update(report.users)
    # The observer is one more client and one more user.
    fig.expected_clients = fig.subscribed + 1
    fig.expected_users = len(users) + 1


def _summarise_observer(fig: PresenceFigures, obs: ObserverReport, start_ns: int, last_reply_ns: int) -> None:
    fig.observer = obs
    if obs.converged_ns:
        fig.converge_after_start_s = (obs.converged_ns - start_ns) / 1e9
        fig.converge_after_replies_s = (obs.converged_ns - last_reply_ns) / 1e9
    if obs.joins_done_ns:
        fig.joins_after_replies_s = (obs.joins_done_ns - last_reply_ns) / 1e9
    if obs.first_error and not fig.first_error:
        fig.first_error = f"observer: {obs.first_error}"


def _latency_figures(report: QueryReport, names: list[str], requested: int) -> LatencyFigures:
    fig = LatencyFigures(report.kind, requested, report.sent, errors=report.errors, mismatches=report.mismatches)
    fig.seconds, fig.first_error = report.seconds, report.first_error
    merged: array[int] = array("q")
    for gateway, took in sorted(report.took_ns.items()):
        merged.extend(took)
        if took:
            values = sorted(took)
            fig.per_gateway[names[gateway]] = (len(values), percentile(values, 50) / 1e6, percentile(values, 99) / 1e6)
    fig.answered = len(merged)
    if merged:
        fig.p50_ms, fig.p95_ms, fig.p99_ms, fig.max_ms = ms_quartet(sorted(merged))
    return fig


def _presence_join_storm(run: Run, ps: _PresenceStack, fig: PresenceFigures, observer: Child) -> None:
    """Phase 1: every worker client subscribes at its paced instant; the observer counts joins."""
    opts, plan = run.opts, run.scn.presence
    assert plan is not None
    children = [*run.subscribers, observer]
    overflows_before = listen_overflows()
    counters_before = ps.presence_counters()
    start_ns = time.time_ns() + int(_PRESENCE_LEAD_S * 1e9)
    for child in run.subscribers:
        child.send("join", start_ns)
    time.sleep(max(0.0, (start_ns - time.time_ns()) / 1e9 - 0.01))
    before = cpu_snapshot(children, run.watched)
    limit = _PRESENCE_LEAD_S + plan.window_s + opts.connect_timeout + 30
    joins: list[JoinReport] = [c.recv("joined", limit) for c in run.subscribers]
    run.result.listen_overflows = listen_overflows() - overflows_before
    _summarise_joins(fig, joins, start_ns)
    converge = ConvergePlan(
        clients=fig.expected_clients,
        users=fig.expected_users,
        joins=fig.subscribed,
        timeout_s=plan.converge_timeout,
        poll_s=_POLL_S,
        join_idle_s=_JOIN_IDLE_S,
    )
    observer.send("converge", converge)
    obs: ObserverReport = observer.recv("converged", plan.converge_timeout + opts.command_timeout + 30)
    fig.windows.append(cpu_window("join storm (start to convergence)", before, cpu_snapshot(children, run.watched)))
    _summarise_observer(fig, obs, start_ns, max((r.last_reply_ns for r in joins), default=start_ns))
    fig.presence_rss = tree_rss(ps.presence_pid)
    fig.gateway_rss = {name: tree_rss(pid) for name, pid in ps.gateways.items()}
    counters_after = ps.presence_counters()
    if _SYNCS in counters_before and _SYNCS in counters_after:
        fig.syncs = int(counters_after[_SYNCS] - counters_before[_SYNCS])
    if _JOIN_EVENTS in counters_after:
        fig.join_events = int(counters_after[_JOIN_EVENTS] - counters_before.get(_JOIN_EVENTS, 0.0))


def _presence_queries(run: Run, ps: _PresenceStack, fig: PresenceFigures, observer: Child) -> None:
    """Phases 2 and 3: timed presence_stats, then presence requests, from worker 0's clients."""
    opts, plan = run.opts, run.scn.presence
    assert plan is not None
    children = [*run.subscribers, observer]
    querier = run.subscribers[0]
    names = list(ps.gateways)
    for kind, count in ((STATS, plan.stats_requests), (PRESENCE, plan.presence_requests)):
        if count <= 0:
            continue
        query = QueryPlan(kind, count, plan.query_concurrency, fig.expected_clients, plan.query_timeout)
        before = cpu_snapshot(children, run.watched)
        querier.send("query", query)
        report: QueryReport = querier.recv("queried", plan.query_timeout + opts.command_timeout + 30)
        fig.windows.append(cpu_window(f"{kind} requests", before, cpu_snapshot(children, run.watched)))
        figures = _latency_figures(report, names, count)
        if kind == STATS:
            fig.stats = figures
        else:
            fig.presence = figures


def _apply_presence(run: Run, fig: PresenceFigures) -> None:
    """The common columns: presence_stats latency, presence service CPU and RSS per member."""
    result, opts = run.result, run.opts
    result.connected = fig.subscribed
    result.connect_seconds = fig.all_replies_s
    result.first_error = result.first_error or fig.first_error
    result.errors = sum(fig.failures.values())
    if fig.windows:
        storm = fig.windows[0]
        result.server_cpu = storm.servers.get("presence", 0.0)
        result.nats_cpu = storm.servers.get("nats")
        result.host_cpu = storm.host
        result.other_cpu = storm.other
    for window in fig.windows:
        for name, pct in window.loadgen.items():
            result.loadgen_cpu[name] = max(result.loadgen_cpu.get(name, 0.0), pct)
    result.saturated = any(pct > opts.saturation for pct in result.loadgen_cpu.values())
    if fig.expected_clients and fig.presence_rss:
        result.rss_per_conn_kib = (fig.presence_rss - fig.presence_rss_before) / fig.expected_clients / 1024
    stats = fig.stats
    if stats is not None:
        result.p50_ms, result.p95_ms, result.p99_ms, result.max_ms = (
            stats.p50_ms,
            stats.p95_ms,
            stats.p99_ms,
            stats.max_ms,
        )
        if stats.answered < stats.requested:
            result.goal_miss = f"{stats.requested - stats.answered} of {stats.requested} presence_stats unanswered"


def _measure_presence(run: Run, ps: _PresenceStack) -> None:
    opts, scn, plan = run.opts, run.scn, run.scn.presence
    assert plan is not None
    fig = PresenceFigures(
        clients=scn.connections,
        users=max(1, min(plan.users, scn.connections)),
        gateways=plan.gateways,
        window_s=plan.window_s,
    )
    run.result.presence = fig
    jobs = _presence_jobs(run, ps)
    observer_job = ObserverJob(
        ps.urls[0], opts.secret, f"{PRESENCE_NAMESPACE}:0", opts.command_timeout, jobs[0].control_timeout
    )
    observer = start_child(run.stack, "observer", presence_observer_main, observer_job, None)
    run.subscribers = [start_child(run.stack, f"sub{job.slot}", presence_worker_main, job, None) for job in jobs]
    observer.recv("ready", opts.connect_timeout + 30)
    collect_ready(run.subscribers, opts.connect_timeout + 30)
    time.sleep(opts.settle)
    fig.presence_rss_before = tree_rss(ps.presence_pid)
    try:
        _presence_join_storm(run, ps, fig, observer)
        if fig.subscribed:
            _presence_queries(run, ps, fig, observer)
    finally:
        _apply_presence(run, fig)
    if fig.subscribed == 0:
        run.result.failure = f"no connection succeeded: {fig.first_error}"


def _execute(run: Run, workdir: Path) -> None:
    if run.scn.mode == PRESENCE_MODE:
        ps, check = _start_presence_stack(run, workdir)
        try:
            _measure_presence(run, ps)
        except LoadgenError as exc:
            died = check()
            raise LoadgenError(f"{exc}\n{died}" if died else str(exc)) from exc
        run.result.failure = run.result.failure or check()
        return
    check = _start_servers(run, workdir)
    if run.scn.mode == STORM:
        try:
            _measure_storm(run)
        except LoadgenError as exc:
            died = check()
            raise LoadgenError(f"{exc}\n{died}" if died else str(exc)) from exc
        run.result.failure = check()
        return
    connect_subscribers(run)
    if run.result.connected == 0:
        run.result.failure = f"no connection succeeded: {run.result.first_error}"
        return
    try:
        if run.scn.mode == IDLE:
            _measure_idle(run)
        else:
            _measure_traffic(run)
    except LoadgenError as exc:
        died = check()
        raise LoadgenError(f"{exc}\n{died}" if died else str(exc)) from exc
    run.result.failure = check()


Execute = Callable[[Run, Path], None]


def run_scenario(scn: Scenario, target: str, opts: Options, execute: Execute | None = None) -> RunResult:
    """Run ``scn`` against ``target`` (BASELINE or GATEWAY) and return the figures.

    ``execute`` starts the stack in the run's directory and measures (default:
    the scenarios of this module); the run's ExitStack stops every process.
    """
    result = RunResult(scenario=scn.name, target=target, connections=scn.connections)
    if scn.mode in GATEWAY_ONLY and target != GATEWAY:
        result.skipped = GATEWAY_ONLY[scn.mode]
        return result
    try:
        with TemporaryDirectory(prefix="meshcast-bench-") as tmp, ExitStack() as stack:
            (execute or _execute)(Run(scn, opts, stack, result), Path(tmp))
    except StackError as exc:
        result.start_failed = True
        result.failure = f"{'gateway' if target == GATEWAY else 'nats-server'} failed to start: {exc}"
    except ServiceStartError as exc:
        result.failure = f"{exc.service} failed to start: {exc}"
    except LoadgenError as exc:
        result.failure = f"load generator: {exc}"
    return result


__all__ = [
    "API_MODE",
    "CLOSED_LOOP",
    "CONTROL_MODE",
    "FIXED_RATE",
    "GATEWAY_ONLY",
    "IDLE",
    "PRESENCE_MODE",
    "STORM",
    "Goal",
    "Options",
    "PresencePlan",
    "RunResult",
    "Scenario",
    "run_scenario",
]
