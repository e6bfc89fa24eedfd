"""The ``control`` scenario: DisconnectUser and RevokeUser through the auth service, and its answers without NATS.

Stack: one nats-server, the auth service (``python -m meshcast.auth``, its
own random API key, HS256 with the gateways' secret) and two gateways, all on
the same NATS. Socket workers (`bench.controlload`) hold N clients spread over
the gateways, a gRPC caller process calls the auth service.

Rounds (`controlmodel.ROUNDS`): the workers connect every client, the caller
makes one call per user, the workers report when each socket's close frame
came and with which code. A client counts as closed when its frame carries
the code its call promises (3503, 3500) within ``close_timeout`` of the call's
start. DisconnectUser goes first, twice (fresh gateways, then warm ones): it
leaves the tokens valid, so the same clients connect again each time.

Outages (`controlmodel.OUTAGES`), with no client connected: NATS is stopped
(or frozen) under the running auth service, RevokeUser is called at a fixed
pace for a while (every call awaited), then the caller probes at a finer
pace, NATS comes back and the first successful answer ends the outage.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.controlload import (
    CallerJob,
    CallsOrder,
    CloseReport,
    ConnectReport,
    PacedOrder,
    SocketJob,
    caller_main,
    socket_worker_main,
)
from bench.controlmodel import (
    BYSTANDER,
    DISCONNECT,
    EXPECTED_CODE,
    OK,
    REVOKE,
    ROUNDS,
    STOPPED,
    UNAVAILABLE,
    USER_PREFIX,
    CallResult,
    ControlFigures,
    ControlPlan,
    OutageFigures,
    RoundFigures,
)
from bench.scenarios import (
    AuthStartError,
    Child,
    LoadgenError,
    Options,
    Run,
    RunResult,
    Scenario,
    cpu_snapshot,
    cpu_window,
    ms_quartet,
    percentile,
    run_scenario,
    start_child,
)
from bench.stack import (
    ManagedProcess,
    NatsServer,
    StackError,
    restart_nats,
    start_auth,
    start_gateway,
    start_nats,
    tail,
    write_namespaces,
)

# Every gRPC call's own deadline: far beyond the service's NATS timeout.
_CALL_DEADLINE_S = 30.0
# The pace of the calls that wait for NATS to be back.
_PROBE_INTERVAL_S = 0.02
_CHANNEL = "bench:0"
_NOT_BACK = "nats-server did not start again"


def run_control_scenario(scn: Scenario, target: str, opts: Options) -> RunResult:
    """Run the control scenario (gateway target only; the baseline row is skipped)."""
    return run_scenario(scn, target, opts, execute=_execute)


def _plan(run: Run) -> ControlPlan:
    plan = run.scn.control
    assert plan is not None
    return plan


@dataclass
class _Stack:
    """The processes under test; ``nats`` is replaced when the stopped outage starts it again."""

    nats: NatsServer
    grpc_target: str
    gateways: dict[str, ManagedProcess] = field(default_factory=dict)
    others: list[ManagedProcess] = field(default_factory=list)

    def check(self) -> str:
        procs = [self.nats.proc, *self.others, *self.gateways.values()]
        died = [f"{p.name} died (code {p.popen.returncode}):\n{tail(p.log_path)}" for p in procs if not p.alive()]
        return "\n".join(died)


def _start_stack(run: Run, workdir: Path, api_key: str) -> tuple[_Stack, list[str]]:
    """nats-server, the auth service (it makes the revocation bucket), then the gateways; returns their URLs."""
    opts, plan = run.opts, _plan(run)
    nats_srv = start_nats(opts.nats_binary, workdir, opts.nats_timeout)
    run.stack.callback(nats_srv.proc.stop)
    try:
        auth = start_auth(
            opts.auth_argv, nats_srv.nats_url, api_key, opts.secret, plan.nats_timeout, workdir, opts.auth_timeout
        )
    except StackError as exc:
        raise AuthStartError(str(exc)) from exc
    run.stack.callback(auth.proc.stop)
    st = _Stack(nats_srv, auth.grpc_target, others=[auth.proc])
    # Whichever nats-server runs at the end (the restarted one) is stopped too.
    run.stack.callback(lambda: st.nats.proc.stop())
    namespaces = write_namespaces(workdir)
    urls = []
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
        st.gateways[name] = gateway.proc
        urls.append(gateway.ws_url)
    run.server_pid = st.gateways["gw0"].pid
    run.watched = {"auth": auth.proc.pid, **{n: p.pid for n, p in st.gateways.items()}, "nats": nats_srv.proc.pid}
    return st, urls


def _start_loadgen(run: Run, st: _Stack, urls: list[str], api_key: str) -> Child:
    """The socket workers (into ``run.subscribers``) and the gRPC caller, returned once its channel works."""
    opts, plan = run.opts, _plan(run)
    workers = max(1, min(opts.workers, run.scn.connections))
    limit = opts.connect_timeout * 2 + plan.close_timeout * 2 + (plan.outage_s + plan.recovery_timeout) * 4 + 300
    for slot in range(workers):
        job = SocketJob(
            gateway_urls=urls,
            secret=opts.secret,
            slot=slot,
            workers=workers,
            total=run.scn.connections,
            users=plan.users,
            channel=_CHANNEL,
            concurrency=opts.concurrency,
            connect_timeout=opts.connect_timeout,
            command_timeout=opts.command_timeout,
            control_timeout=limit,
        )
        run.subscribers.append(start_child(run.stack, f"sock{slot}", socket_worker_main, job, None))
    caller = start_child(
        run.stack, "grpc", caller_main, CallerJob(st.grpc_target, api_key, _CALL_DEADLINE_S, limit), None
    )
    caller.recv("ready", opts.connect_timeout + 30)
    return caller


def _results(caller: Child, timeout: float) -> list[CallResult]:
    results: list[CallResult] = caller.recv("results", timeout)
    return results


# ---------------------------------------------------------------- rounds


def _connect(run: Run, fig: RoundFigures) -> None:
    """Every worker connects (and subscribes) its clients."""
    for child in run.subscribers:
        child.send("connect")
    reports: list[ConnectReport] = [c.recv("ready", run.opts.connect_timeout + 30) for c in run.subscribers]
    fig.clients = sum(r.connected for r in reports)
    fig.connect_s = max(r.seconds for r in reports)
    fig.first_error = next((r.first_error for r in reports if r.first_error), "")


def _round(run: Run, method: str, cold: bool, caller: Child, names: list[str]) -> RoundFigures:
    opts, plan = run.opts, _plan(run)
    fig = RoundFigures(method, EXPECTED_CODE[method], cold)
    _connect(run, fig)
    if fig.clients == 0:
        return fig
    time.sleep(opts.settle)
    children = [*run.subscribers, caller]
    before = cpu_snapshot(children, run.watched)
    caller.send("calls", CallsOrder(method, tuple(f"{USER_PREFIX}{i}" for i in range(plan.users))))
    fig.calls = _results(caller, _CALL_DEADLINE_S + 30)
    starts = [call.start_ns for call in fig.calls]  # in the order of the users, as the workers number them
    deadline_ns = min(starts) + int(plan.close_timeout * 1e9)
    for child in run.subscribers:
        child.send("collect", deadline_ns)
    reports: list[CloseReport] = [c.recv("closes", plan.close_timeout + 30) for c in run.subscribers]
    fig.cpu = cpu_window(f"{fig.label} round (call to the last close)", before, cpu_snapshot(children, run.watched))
    _summarise_round(fig, reports, starts, deadline_ns, names, plan)
    failed = [c for c in fig.calls if c.code != OK]
    if failed:
        fig.first_error = fig.first_error or f"{method}({failed[0].user}): {failed[0].code} {failed[0].detail}"
    return fig


def _summarise_round(
    fig: RoundFigures,
    reports: list[CloseReport],
    starts: list[int],
    deadline_ns: int,
    names: list[str],
    plan: ControlPlan,
) -> None:
    took: array[int] = array("q")
    per_gateway: dict[int, list[int]] = {}
    other: Counter[int] = Counter()
    for report in reports:
        for client in report.clients:
            if client.close_ns and client.code == fig.expected_code and client.close_ns <= deadline_ns:
                ns = client.close_ns - starts[client.user]
                took.append(ns)
                per_gateway.setdefault(client.gateway, []).append(ns)
            elif client.close_ns:
                other[client.code] += 1
            elif client.dropped:
                fig.dropped += 1
            else:
                fig.unclosed += 1
    fig.closed = len(took)
    fig.other_codes = dict(other)
    fig.within_target = sum(1 for ns in took if ns <= plan.target_s * 1e9)
    if took:
        fig.close_ms = ms_quartet(sorted(took))
    for index, values in sorted(per_gateway.items()):
        values.sort()
        fig.per_gateway[names[index]] = (len(values), percentile(values, 50) / 1e6, values[-1] / 1e6)


# ---------------------------------------------------------------- outages


def _bring_back(st: _Stack, kind: str, fig: OutageFigures, opts: Options) -> int:
    """NATS back: SIGCONT, or started again and healthy; returns the wall-clock ns it is back."""
    if kind != STOPPED:
        os.kill(st.nats.proc.pid, signal.SIGCONT)
        return time.time_ns()
    started = time.monotonic()
    st.nats = restart_nats(st.nats, opts.nats_timeout)
    fig.restart_s = time.monotonic() - started
    return time.time_ns()


def _outage(run: Run, st: _Stack, kind: str, caller: Child) -> OutageFigures:
    opts, plan = run.opts, _plan(run)
    fig = OutageFigures(kind)
    # nats-server is not sampled: it is stopped or frozen, and after a restart another process.
    watched = {name: pid for name, pid in run.watched.items() if name != "nats"}
    before = cpu_snapshot([caller], watched)
    frozen = kind != STOPPED
    back_ns = 0
    try:
        if frozen:
            os.kill(st.nats.proc.pid, signal.SIGSTOP)
        else:
            st.nats.proc.stop()
        caller.send("paced", PacedOrder(REVOKE, BYSTANDER, plan.call_interval_s, plan.outage_s))
        fig.calls = _results(caller, plan.outage_s + _CALL_DEADLINE_S + 30)
        caller.send("probe", PacedOrder(REVOKE, BYSTANDER, _PROBE_INTERVAL_S, plan.recovery_timeout))
        caller.recv("probing", 30)
        back_ns = _bring_back(st, kind, fig, opts)
    except StackError as exc:
        fig.first_error = f"{_NOT_BACK}: {exc}"
    finally:
        if frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(st.nats.proc.pid, signal.SIGCONT)
    run.watched["nats"] = st.nats.proc.pid
    probes = _results(caller, plan.recovery_timeout + _CALL_DEADLINE_S + 30)
    fig.cpu = cpu_window(f"{kind} outage (first call to the first success)", before, cpu_snapshot([caller], watched))
    _summarise_outage(fig, probes, back_ns, plan.recovery_timeout)
    return fig


def _summarise_outage(fig: OutageFigures, probes: list[CallResult], back_ns: int, limit_s: float) -> None:
    fig.codes = dict(Counter(call.code for call in fig.calls))
    unavailable = sorted(call.end_ns - call.start_ns for call in fig.calls if call.code == UNAVAILABLE)
    if unavailable:
        fig.unavailable_ms = (
            percentile(unavailable, 50) / 1e6,
            percentile(unavailable, 95) / 1e6,
            unavailable[-1] / 1e6,
        )
    other = next((call for call in fig.calls if call.code != UNAVAILABLE), None)
    if other is not None and not fig.first_error:
        fig.first_error = f"a call during the outage answered {other.code} {other.detail}".rstrip()
    fig.probes = len(probes)
    if not back_ns:
        return
    fig.failed_after_back = sum(1 for p in probes if p.start_ns >= back_ns and p.code != OK)
    first_ok = next((p for p in sorted(probes, key=lambda p: p.end_ns) if p.code == OK), None)
    if first_ok is not None:
        fig.recovered_s = (first_ok.end_ns - back_ns) / 1e9
    elif not fig.first_error:
        fig.first_error = f"no RevokeUser succeeded within {limit_s:g}s of probing"


# ---------------------------------------------------------------- summary


def _apply(run: Run, fig: ControlFigures) -> None:
    """The common columns: the warm DisconnectUser round (srv CPU% = the busier gateway); CPU maxima of the loadgen."""
    result, opts, plan = run.result, run.opts, _plan(run)
    result.control = fig
    windows = [r.cpu for r in fig.rounds] + [o.cpu for o in fig.outages]
    for window in windows:
        if window is not None:
            for name, pct in window.loadgen.items():
                result.loadgen_cpu[name] = max(result.loadgen_cpu.get(name, 0.0), pct)
    result.saturated = any(pct > opts.saturation for pct in result.loadgen_cpu.values())
    result.errors = sum(1 for r in fig.rounds for c in r.calls if c.code != OK)
    phases: list[RoundFigures | OutageFigures] = [*fig.rounds, *fig.outages]
    result.first_error = next((f.first_error for f in phases if f.first_error), "")
    main = fig.round(DISCONNECT) or (fig.rounds[-1] if fig.rounds else None)
    if main is None:
        return
    result.connected, result.connect_seconds = main.clients, main.connect_s
    if main.close_ms is not None:
        result.p50_ms, result.p95_ms, result.p99_ms, result.max_ms = main.close_ms
    if main.cpu is not None:
        result.server_cpu = max((main.cpu.servers.get(name, 0.0) for name in _gateway_names(plan)), default=0.0)
        result.nats_cpu = main.cpu.servers.get("nats")
        result.host_cpu, result.other_cpu = main.cpu.host, main.cpu.other
    if not main.all_closed:
        result.goal_miss = (
            f"{main.clients - main.closed} of {main.clients} clients not closed with {main.expected_code}"
            f" within {plan.close_timeout:g}s"
        )


def _gateway_names(plan: ControlPlan) -> list[str]:
    return [f"gw{index}" for index in range(plan.gateways)]


def _execute(run: Run, workdir: Path) -> None:
    plan = _plan(run)
    api_key = "bench-auth-key-" + os.urandom(8).hex()
    st, urls = _start_stack(run, workdir, api_key)
    fig = ControlFigures(run.scn.connections, plan.users, plan.gateways, plan.nats_timeout)
    try:
        caller = _start_loadgen(run, st, urls, api_key)
        try:
            for method, cold in ROUNDS:
                fig.rounds.append(_round(run, method, cold, caller, _gateway_names(plan)))
                if fig.rounds[-1].clients == 0:
                    run.result.failure = f"no connection succeeded: {fig.rounds[-1].first_error}"
                    return
            caller.send("paced", PacedOrder(REVOKE, BYSTANDER, plan.call_interval_s, plan.outage_s))
            fig.baseline = _results(caller, plan.outage_s + _CALL_DEADLINE_S + 30)
            for kind in plan.outages:
                outage = _outage(run, st, kind, caller)
                fig.outages.append(outage)
                if outage.first_error.startswith(_NOT_BACK):
                    run.result.failure = outage.first_error
                    return
        finally:
            _apply(run, fig)
    except LoadgenError as exc:
        died = st.check()
        raise LoadgenError(f"{exc}\n{died}" if died else str(exc)) from exc
    run.result.failure = st.check()
