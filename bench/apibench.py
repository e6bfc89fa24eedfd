"""The ``api`` scenario: publish requests through one server API process into a 1:N fan-out.

Stack: one nats-server, (for the history variant the history service,) one
gateway and one ``python -m meshcast.api``, all on the same NATS. N subscriber
connections (the ordinary subscriber workers) subscribe to one channel on the
gateway; API publisher processes (`bench.apiload`) publish to that channel
over keep-alive HTTP connections, phase after phase (closed loop, fixed
rate, batches). Per phase:

* request figures from the publishers: requests/s and publications/s over
  the window, request latency, and for the fixed rate whether it was held;
* delivery figures from the subscribers: every publication of the window
  (and, after a bounded drain, every publication so far, warmups included)
  must reach every subscriber; deliveries/s and delivery latency;
* CPU of the API, the gateway, nats-server and every load generator over the
  window, and the API's and gateway's RSS at its end.

The next phase starts only after the drain, so a gateway still fanning out
the previous phase's backlog does not share the machine with it.
"""

from __future__ import annotations

import os
import time
from array import array
from collections.abc import Callable
from pathlib import Path

from bench.apiload import CLOSED, RATE, ApiJob, ApiPhase, ApiPhaseReport, api_publisher_main
from bench.apimodel import API_HISTORY_NAMESPACE, ApiFigures, ApiPhaseFigures, ApiPlan
from bench.loadgen import GATEWAY, Endpoint, ReadyInfo, SubscriberReport
from bench.scenarios import (
    ApiStartError,
    Child,
    HistoryStartError,
    LoadgenError,
    Options,
    Run,
    RunResult,
    Scenario,
    collect_ready,
    collect_reports,
    connect_subscribers,
    cpu_snapshot,
    cpu_window,
    drain,
    ms_quartet,
    percentile,
    run_scenario,
    start_child,
)
from bench.stack import (
    ApiService,
    StackError,
    api_namespaces_yaml,
    start_api,
    start_gateway,
    start_history,
    start_nats,
    tail,
    tree_rss,
    write_namespaces,
)

# Lead time between sending a phase to the publishers and its start (all start together).
_LEAD_S = 0.3
# A rate is held when this share of the due requests went out within the window and got answers.
_HELD_SHARE = 0.99
# ... and when no request went out later than this after its due time.
_HELD_LAG_MS = 50.0


def run_api_scenario(scn: Scenario, target: str, opts: Options) -> RunResult:
    """Run the api scenario (gateway target only; the baseline row is skipped)."""
    return run_scenario(scn, target, opts, execute=_execute)


def _plan(run: Run) -> ApiPlan:
    plan = run.scn.api
    assert plan is not None
    return plan


def _start_stack(run: Run, workdir: Path, api_key: str) -> tuple[ApiService, Callable[[], str]]:
    """nats-server, (history,) the gateway, then the API; returns the API and a liveness check."""
    opts, plan = run.opts, _plan(run)
    nats_srv = start_nats(opts.nats_binary, workdir, opts.nats_timeout)
    run.stack.callback(nats_srv.proc.stop)
    procs = [nats_srv.proc]
    namespaces = write_namespaces(workdir, api_namespaces_yaml(API_HISTORY_NAMESPACE))
    if plan.history:
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
    procs.append(gateway.proc)
    try:
        api = start_api(opts.api_argv, nats_srv.nats_url, api_key, namespaces, workdir, opts.api_timeout)
    except StackError as exc:
        raise ApiStartError(str(exc)) from exc
    run.stack.callback(api.proc.stop)
    procs.append(api.proc)
    # The gateway's RSS per subscriber goes to the KiB/conn column.
    run.server_pid = gateway.proc.pid
    run.watched.update(api=api.proc.pid, gateway=gateway.proc.pid, nats=nats_srv.proc.pid)
    run.endpoint = Endpoint(GATEWAY, gateway.ws_url, nats_srv.nats_url, opts.secret)

    def check() -> str:
        died = [f"{p.name} died (code {p.popen.returncode}):\n{tail(p.log_path)}" for p in procs if not p.alive()]
        return "\n".join(died)

    return api, check


def _split(total: int, parts: int, slot: int) -> int:
    return total // parts + (1 if slot < total % parts else 0)


def _start_publishers(run: Run, api: ApiService, api_key: str, channel: str) -> list[Child]:
    opts, plan = run.opts, _plan(run)
    most = max(plan.connections(kind) for kind in plan.phases)
    phases_s = len(plan.phases) * (opts.warmup + opts.duration + plan.drain_timeout + opts.command_timeout + 60)
    publishers = []
    for slot in range(plan.publishers):
        job = ApiJob(
            slot=slot,
            host="127.0.0.1",
            port=api.http_port,
            api_key=api_key,
            channel=channel,
            connections=max(1, _split(most, plan.publishers, slot)),
            connect_timeout=opts.connect_timeout,
            command_timeout=opts.command_timeout,
            control_timeout=phases_s + 120,
        )
        publishers.append(start_child(run.stack, f"pub{slot}", api_publisher_main, job, None))
    infos: list[ReadyInfo] = collect_ready(publishers, opts.connect_timeout + 30)
    broken = [info.first_error for info in infos if info.failed]
    if broken:
        raise LoadgenError(f"API publisher could not connect: {broken[0]}")
    return publishers


def _phase_jobs(run: Run, kind: str, start_ns: int) -> list[ApiPhase]:
    opts, plan = run.opts, _plan(run)
    record_from = start_ns + int(opts.warmup * 1e9)
    end_ns = record_from + int(opts.duration * 1e9)
    jobs = []
    for slot in range(plan.publishers):
        # At a fixed rate the processes take turns: process k sends k/P of an interval later.
        offset = int(slot * 1e9 / plan.rate) if kind == RATE else 0
        jobs.append(
            ApiPhase(
                kind=kind,
                start_ns=start_ns + offset,
                record_from_ns=record_from,
                end_ns=end_ns,
                connections=max(1, _split(plan.connections(kind), plan.publishers, slot)),
                rate=plan.rate / plan.publishers,
                batch_size=plan.batch(kind),
            )
        )
    return jobs


_SUMMED = (
    "sent",
    "ok",
    "publications",
    "window_sent",
    "window_ok",
    "window_publications",
    "measured_publications",
    "scheduled",
    "unanswered",
    "errors",
)


def _merge(reports: list[ApiPhaseReport]) -> tuple[ApiPhaseReport, list[int], list[int]]:
    """One report of all publishers, with sorted latencies and lags."""
    total = ApiPhaseReport(reports[0].kind)
    latencies: array[int] = array("q")
    lags: array[int] = array("q")
    for report in reports:
        for name in _SUMMED:
            setattr(total, name, getattr(total, name) + getattr(report, name))
        total.first_error = total.first_error or report.first_error
        latencies.extend(report.latencies)
        lags.extend(report.lags)
    starts = [r.first_send_ns for r in reports if r.first_send_ns]
    total.first_send_ns = min(starts, default=0)
    total.last_done_ns = max((r.last_done_ns for r in reports), default=0)
    return total, sorted(latencies), sorted(lags)


def _request_figures(fig: ApiPhaseFigures, total: ApiPhaseReport, latencies: list[int], lags: list[int]) -> None:
    fig.sent, fig.answered, fig.errors = total.window_sent, total.window_ok, total.errors
    fig.unanswered, fig.scheduled, fig.first_error = total.unanswered, total.scheduled, total.first_error
    if fig.seconds > 0:
        fig.requests_per_s = total.window_ok / fig.seconds
        fig.publications_per_s = total.window_publications / fig.seconds
    if latencies:
        fig.p50_ms, fig.p95_ms, fig.p99_ms, fig.max_ms = ms_quartet(latencies)
    if fig.kind == RATE:
        fig.lag_p99_ms = percentile(lags, 99) / 1e6 if lags else None
        fig.lag_max_ms = lags[-1] / 1e6 if lags else None
        on_time = fig.lag_max_ms is not None and fig.lag_max_ms <= _HELD_LAG_MS
        fig.held = on_time and fig.scheduled > 0 and total.window_ok >= _HELD_SHARE * fig.scheduled


def _delivery_figures(fig: ApiPhaseFigures, reports: list[SubscriberReport], record_from: int) -> None:
    fig.delivered = sum(r.measured for r in reports)
    last_recv = max((r.last_recv_ns for r in reports), default=0)
    if last_recv > record_from and fig.delivered:
        fig.deliveries_per_s = fig.delivered / ((last_recv - record_from) / 1e9)
    merged: array[int] = array("q")
    for report in reports:
        merged.extend(report.latencies)
    if merged:
        values = sorted(merged)
        fig.delivery_p50_ms = percentile(values, 50) / 1e6
        fig.delivery_p99_ms = percentile(values, 99) / 1e6
    fig.disconnects = sum(r.disconnects for r in reports)


class _Phases:
    """Runs the phases one after the other; keeps the running total of publications owed."""

    def __init__(self, run: Run, publishers: list[Child]) -> None:
        self.run, self.publishers = run, publishers
        self.published = 0

    def measure(self, kind: str) -> ApiPhaseFigures:
        run, opts, plan = self.run, self.run.opts, _plan(self.run)
        children = [*run.subscribers, *self.publishers]
        start_ns = time.time_ns() + int(_LEAD_S * 1e9)
        jobs = _phase_jobs(run, kind, start_ns)
        record_from, end_ns = jobs[0].record_from_ns, jobs[0].end_ns
        fig = ApiPhaseFigures(kind, plan.connections(kind), plan.batch(kind), plan.rate if kind == RATE else 0.0)
        for child in run.subscribers:
            child.send("start", record_from)
        for child, job in zip(self.publishers, jobs, strict=True):
            child.send("phase", job)
        time.sleep(max(0.0, (record_from - time.time_ns()) / 1e9))
        before = cpu_snapshot(children, run.watched)
        limit = _LEAD_S + opts.warmup + opts.duration + opts.command_timeout + 30
        reports: list[ApiPhaseReport] = [c.recv("report", limit) for c in self.publishers]
        fig.cpu = cpu_window(fig.label, before, cpu_snapshot(children, run.watched))
        fig.seconds = (min(time.time_ns(), end_ns) - record_from) / 1e9
        fig.rss = {name: tree_rss(run.watched[name]) for name in ("api", "gateway")}
        total, latencies, lags = _merge(reports)
        _request_figures(fig, total, latencies, lags)
        subscribers = run.result.connected
        self.published += total.publications
        fig.published, fig.expected = total.window_publications, total.measured_publications * subscribers
        fig.total_expected = self.published * subscribers
        drained_from = time.monotonic()
        drain(run.counters, fig.total_expected, opts, plan.drain_timeout)
        fig.drain_s = time.monotonic() - drained_from
        fig.total_delivered = sum(run.counters)
        _delivery_figures(fig, collect_reports(run), record_from)
        return fig


def _apply(run: Run, fig: ApiFigures) -> None:
    """The common columns: the closed-loop phase (else the first one); CPU maxima of the load generators."""
    result, opts = run.result, run.opts
    result.api = fig
    result.first_error = result.first_error or fig.first_error
    for phase in fig.phases:
        result.published += phase.published
        result.delivered += phase.delivered
        result.expected += phase.expected
        result.errors += phase.errors
        if phase.cpu is not None:
            for name, pct in phase.cpu.loadgen.items():
                result.loadgen_cpu[name] = max(result.loadgen_cpu.get(name, 0.0), pct)
    result.saturated = any(pct > opts.saturation for pct in result.loadgen_cpu.values())
    main = fig.phase(CLOSED) or (fig.phases[0] if fig.phases else None)
    if main is None:
        return
    result.requests_per_s = main.requests_per_s
    result.deliveries_per_s = main.deliveries_per_s
    result.p50_ms, result.p95_ms, result.p99_ms, result.max_ms = main.p50_ms, main.p95_ms, main.p99_ms, main.max_ms
    if main.cpu is not None:
        result.server_cpu = main.cpu.servers.get("api", 0.0)
        result.nats_cpu = main.cpu.servers.get("nats")
        result.host_cpu = main.cpu.host
        result.other_cpu = main.cpu.other


def _execute(run: Run, workdir: Path) -> None:
    plan = _plan(run)
    api_key = "bench-api-key-" + os.urandom(8).hex()
    api, check = _start_stack(run, workdir, api_key)
    channel = f"{run.scn.namespace}:0"
    fig = ApiFigures(channel, plan.history, run.scn.connections, plan.publishers)
    try:
        connect_subscribers(run)
        if run.result.connected == 0:
            run.result.failure = f"no connection succeeded: {run.result.first_error}"
            return
        phases = _Phases(run, _start_publishers(run, api, api_key, channel))
        try:
            for kind in plan.phases:
                fig.phases.append(phases.measure(kind))
        finally:
            _apply(run, fig)
    except LoadgenError as exc:
        died = check()
        raise LoadgenError(f"{exc}\n{died}" if died else str(exc)) from exc
    run.result.failure = check()
