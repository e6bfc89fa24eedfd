"""Plain-text report: one table row per (scenario, target), ratios, targets."""

from __future__ import annotations

from collections.abc import Callable

from bench.apiload import RATE
from bench.apimodel import ApiFigures, ApiPhaseFigures, ApiPlan
from bench.controlmodel import (
    DISCONNECT,
    OK,
    STOPPED,
    CallResult,
    ControlFigures,
    ControlPlan,
    OutageFigures,
    RoundFigures,
)
from bench.loadgen import BASELINE, GATEWAY
from bench.scenarios import CpuWindow, Goal, LatencyFigures, PresenceFigures, RunResult, Scenario, StormFigures

Column = tuple[str, int, Callable[[RunResult], float | None], str]

_COLUMNS: list[Column] = [
    ("deliv/s", 11, lambda r: r.deliveries_per_s, "{:,.0f}"),
    ("p50 ms", 8, lambda r: r.p50_ms, "{:.2f}"),
    ("p95 ms", 8, lambda r: r.p95_ms, "{:.2f}"),
    ("p99 ms", 8, lambda r: r.p99_ms, "{:.2f}"),
    ("max ms", 8, lambda r: r.max_ms, "{:.2f}"),
    ("KiB/conn", 9, lambda r: r.rss_per_conn_kib, "{:.1f}"),
    ("srv CPU%", 9, lambda r: r.server_cpu if not r.failure else None, "{:.0f}"),
    ("lg CPU%max", 10, lambda r: max(r.loadgen_cpu.values(), default=None), "{:.0f}"),
]


def _cell(value: float | None, fmt: str, width: int) -> str:
    return ("-" if value is None else fmt.format(value)).rjust(width)


def _status(result: RunResult) -> str:
    if result.skipped:
        return "skipped"
    if result.failure:
        return "FAILED"
    if result.saturated:
        return "INVALID (load generator saturated)"
    return "ok"


def _header() -> str:
    cells = [f"{'scenario':<9}", f"{'target':<9}", f"{'conns':>6}"]
    cells += [name.rjust(width) for name, width, _, _ in _COLUMNS]
    return " ".join([*cells, "status"])


def _row(result: RunResult) -> str:
    if result.skipped:
        cells = [f"{result.scenario:<9}", f"{result.target:<9}", f"{'-':>6}"]
        cells += ["-".rjust(width) for _, width, _, _ in _COLUMNS]
        return " ".join([*cells, _status(result)])
    cells = [f"{result.scenario:<9}", f"{result.target:<9}", f"{result.connected:>6}"]
    cells += [_cell(get(result), fmt, width) for _, width, get, fmt in _COLUMNS]
    return " ".join([*cells, _status(result)])


def _ratio_row(gateway: RunResult, baseline: RunResult) -> str:
    cells = [f"{'':<9}", f"{'gw/base':<9}", f"{'':>6}"]
    for _, width, get, _ in _COLUMNS:
        gw_value, base_value = get(gateway), get(baseline)
        if gw_value is None or base_value is None or base_value == 0:
            cells.append("-".rjust(width))
        else:
            cells.append(f"x{gw_value / base_value:.2f}".rjust(width))
    return " ".join(cells)


def _storm_details(result: RunResult, storm: StormFigures) -> list[str]:
    cpu = " ".join(f"{name}={pct:.0f}%" for name, pct in result.loadgen_cpu.items())
    history = "-" if result.history_cpu is None else f"{result.history_cpu:.0f}%"
    nats = "-" if result.nats_cpu is None else f"{result.nats_cpu:.0f}%"
    failures = ", ".join(f"{name} {count}" for name, count in storm.failures.items())
    lines = [
        f"    {result.target}: subscribed {storm.subscribed}/{storm.clients} in {result.connect_seconds:.1f}s;"
        f" all closed their sockets ({storm.unclosed} did not close in time);"
        f" {storm.published}/{storm.publications} publications acked in {storm.publish_seconds:.2f}s",
        f"      storm: {storm.verified}/{storm.clients} recovered with exactly {storm.publications} publications;"
        f" recovered publications {storm.recovered_publications:,}/{storm.subscribed * storm.publications:,};"
        f" failures: {failures}",
        f"      CPU over the storm window ({storm.window_s:.2f}s), % of one core: gateway {result.server_cpu:.0f}%,"
        f" history service {history}, nats-server {nats}; loadgen {cpu}",
        f"      host CPU {result.host_cpu:.0f}% of all cores; outside the bench's processes "
        f"{max(0.0, result.other_cpu):.0f}% of a core (other processes, kernel){_busy_note(result)}",
    ]
    if result.listen_overflows:
        lines.append(f"      TCP listen queue overflows while connecting: {result.listen_overflows}")
    if result.first_error:
        lines.append(f"      first error: {result.first_error}")
    return lines


def _mib(value: int) -> str:
    return f"{value / 1048576:.1f} MiB"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _verdict(met: bool, saturated: bool) -> str:
    return ("PASS" if met else "MISS") + (" (INVALID: load generator saturated)" if saturated else "")


def _latency_line(lat: LatencyFigures) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    gateways = "; ".join(f"{name}: {n} p50 {p50:.2f} p99 {p99:.2f}" for name, (n, p50, p99) in lat.per_gateway.items())
    return (
        f"      {lat.kind}: {lat.answered}/{lat.requested} answered in {lat.seconds:.2f}s, errors {lat.errors},"
        f" wrong member count {lat.mismatches}; ms p50 {ms(lat.p50_ms)} p95 {ms(lat.p95_ms)} p99 {ms(lat.p99_ms)}"
        f" max {ms(lat.max_ms)} ({gateways})"
    )


def _window_line(window: CpuWindow) -> str:
    servers = " ".join(f"{name} {pct:.0f}%" for name, pct in window.servers.items() if name != "bench")
    loadgen = " ".join(f"{name} {pct:.0f}%" for name, pct in window.loadgen.items())
    return (
        f"      CPU {window.name} ({window.seconds:.2f}s), % of one core: {servers}; loadgen {loadgen};"
        f" orchestrator {window.servers.get('bench', 0.0):.0f}%; host {window.host:.0f}% of all cores,"
        f" {max(0.0, window.other):.0f}% of a core outside the bench's processes"
        + (" - HOST CPU-BOUND" if window.host >= 95.0 else "")
    )


def _presence_targets(result: RunResult, fig: PresenceFigures, p99_target: float) -> list[str]:
    bad = result.saturated
    exact = fig.converged and fig.expected_clients == fig.clients + 1
    lines = [
        f"    target presence_stats shows exactly {fig.clients + 1:,} clients [{result.target}]:"
        f" {'yes' if exact else 'no'} {_verdict(exact, bad)}",
        f"    target no lost join: {fig.clients:,} join pushes [{result.target}]: {fig.joins_seen:,}"
        f" {_verdict(fig.joins_seen == fig.clients, bad)}",
    ]
    lat = fig.presence
    if lat is not None:
        met = lat.p99_ms is not None and lat.p99_ms < p99_target and lat.answered == lat.requested
        met = met and lat.mismatches == 0
        shown = "-" if lat.p99_ms is None else f"{lat.p99_ms:,.2f}"
        lines.append(
            f"    target presence p99 < {p99_target:g} ms, every reply {fig.expected_clients:,} members"
            f" [{result.target}]: {shown} {_verdict(met, bad)}"
        )
    return lines


def _presence_details(result: RunResult, fig: PresenceFigures) -> list[str]:
    failures = ", ".join(f"{name} {count}" for name, count in fig.failures.items()) or "none"
    split = "/".join(str(n) for n in fig.per_gateway)
    sub = "-" if fig.subscribe_ms is None else " / ".join(f"{v:.1f}" for v in fig.subscribe_ms)
    # Starts wait while a worker has --concurrency connects in flight: a slow stack stretches the window.
    held = "" if fig.actual_window_s <= fig.window_s * 1.05 else ", NOT HELD: the stack fell behind the pace"
    lines = [
        f"    {result.target}: join storm: {fig.subscribed:,}/{fig.clients:,} clients ({fig.users:,} users)"
        f" subscribed, per gateway {split}; failures: {failures}",
        f"      connects started over {fig.actual_window_s:.2f}s (target window {fig.window_s:g}s{held}, largest"
        f" start lag {fig.max_lag_s * 1000:.0f} ms); all subscribe replies {fig.all_replies_s:.2f}s after the start;"
        f" connect+subscribe ms p50/p95/p99/max {sub}",
    ]
    obs = fig.observer
    if obs is not None:
        state = "exactly" if obs.converged_ns else "NOT"
        lines.append(
            f"      presence_stats {state} {fig.expected_clients:,} clients / {fig.expected_users:,} users"
            f" (last seen {obs.last_clients:,} / {obs.last_users:,}, {obs.polls} polls, {obs.poll_errors} errors):"
            f" {_seconds(fig.converge_after_replies_s)} after the last subscribe reply,"
            f" {_seconds(fig.converge_after_start_s)} after the start"
        )
        lines.append(
            f"      observer join pushes: {obs.distinct_joins:,} clients ({obs.joins:,} pushes, own {obs.own_joins})"
            f" of {fig.subscribed:,}, all in {_seconds(fig.joins_after_replies_s)} after the last subscribe reply;"
            f" leave pushes {obs.leaves}; observer {'DISCONNECTED' if obs.disconnected else 'connected'}"
        )
    if fig.syncs is not None or fig.join_events is not None:
        syncs = "-" if fig.syncs is None else f"{fig.syncs}"
        events = "-" if fig.join_events is None else f"{fig.join_events:,}"
        lines.append(
            f"      presence service during the storm: {events} join events applied, {syncs} gateway snapshots"
            " applied (each replaces all of that gateway's members)"
        )
    gateways = ", ".join(f"{name} {_mib(rss)}" for name, rss in fig.gateway_rss.items())
    lines.append(
        f"      RSS with {fig.expected_clients:,} members: presence service {_mib(fig.presence_rss)}"
        f" (+{_mib(fig.presence_rss - fig.presence_rss_before)} over the storm); gateways {gateways}"
    )
    for lat in (fig.stats, fig.presence):
        if lat is not None:
            lines.append(_latency_line(lat))
    lines.extend(_window_line(w) for w in fig.windows)
    if result.listen_overflows:
        lines.append(f"      TCP listen queue overflows while connecting: {result.listen_overflows}")
    if result.first_error:
        lines.append(f"      first error: {result.first_error}")
    return lines


_API_HEADER = (
    f"      {'phase':<13} {'conns':>5} {'req/s':>8} {'pub/s':>8} {'deliv/s':>10} {'p50 ms':>7} {'p95 ms':>7}"
    f" {'p99 ms':>7} {'max ms':>7} {'api CPU%':>8} {'api MiB':>7} {'gw CPU%':>7} {'gw MiB':>7} {'nats%':>6}"
    f" {'pub CPU%':>8}"
)


def _fmt(value: float | None, fmt: str, width: int) -> str:
    return ("-" if value is None else fmt.format(value)).rjust(width)


def _api_phase_row(phase: ApiPhaseFigures) -> str:
    cpu = phase.cpu
    servers = {} if cpu is None else cpu.servers
    loadgen = max((v for k, v in cpu.loadgen.items() if k.startswith("pub")), default=None) if cpu else None
    return (
        f"      {phase.label:<13} {phase.connections:>5} {_fmt(phase.requests_per_s, '{:,.0f}', 8)}"
        f" {_fmt(phase.publications_per_s, '{:,.0f}', 8)} {_fmt(phase.deliveries_per_s, '{:,.0f}', 10)}"
        f" {_fmt(phase.p50_ms, '{:.2f}', 7)} {_fmt(phase.p95_ms, '{:.2f}', 7)} {_fmt(phase.p99_ms, '{:.2f}', 7)}"
        f" {_fmt(phase.max_ms, '{:.2f}', 7)} {_fmt(servers.get('api'), '{:.0f}', 8)}"
        f" {_fmt(phase.rss.get('api', 0) / 1048576, '{:.1f}', 7)} {_fmt(servers.get('gateway'), '{:.0f}', 7)}"
        f" {_fmt(phase.rss.get('gateway', 0) / 1048576, '{:.1f}', 7)} {_fmt(servers.get('nats'), '{:.0f}', 6)}"
        f" {_fmt(loadgen, '{:.0f}', 8)}"
    )


def _api_phase_notes(phase: ApiPhaseFigures, subscribers: int) -> list[str]:
    share = 100.0 * phase.delivered / phase.expected if phase.expected else 0.0
    every = "every publication reached every subscriber" if phase.all_delivered else "NOT ALL DELIVERED"
    delivery = (
        "-"
        if phase.delivery_p50_ms is None or phase.delivery_p99_ms is None
        else f"{phase.delivery_p50_ms:.1f}/{phase.delivery_p99_ms:.1f}"
    )
    lines = [
        f"      {phase.label}: {phase.answered:,}/{phase.sent:,} window requests answered ({phase.published:,}"
        f" publications), errors {phase.errors}, cut off in flight {phase.unanswered}; window deliveries"
        f" {phase.delivered:,}/{phase.expected:,} ({share:.1f}%), delivery ms p50/p99 {delivery}; all so far"
        f" {phase.total_delivered:,}/{phase.total_expected:,} to {subscribers} subscribers after"
        f" {phase.drain_s:.1f}s of drain: {every}; disconnects {phase.disconnects}",
    ]
    api_cpu = None if phase.cpu is None else phase.cpu.servers.get("api")
    if api_cpu and phase.requests_per_s:
        per_request = api_cpu / 100 / phase.requests_per_s
        # Only a full-speed phase says what a whole core would do; at a fixed rate the API idles between requests.
        whole_core = (
            ""
            if phase.held is not None
            else f": about {1 / per_request:,.0f} requests/s if the API had a whole core (extrapolated, not measured)"
        )
        lines.append(
            f"        API CPU per request {per_request * 1e6:,.0f} us (per publication"
            f" {per_request / phase.batch_size * 1e6:,.0f} us){whole_core}"
        )
    if phase.held is not None:
        lag = (
            "-"
            if phase.lag_p99_ms is None or phase.lag_max_ms is None
            else (f"p99 {phase.lag_p99_ms:.2f} ms, max {phase.lag_max_ms:.2f} ms")
        )
        lines.append(
            f"        {phase.scheduled:,} requests due in {phase.seconds:.1f}s, {phase.answered:,} answered; send lag"
            f" after the due time {lag}: rate {'held' if phase.held else 'NOT HELD'}"
        )
    if phase.cpu is not None:
        lines.append(_window_line(phase.cpu))
    if phase.first_error:
        lines.append(f"        first error: {phase.first_error}")
    return lines


def _api_details(result: RunResult, fig: ApiFigures) -> list[str]:
    kind = "history (acked once stored)" if fig.history else "live (no history)"
    lines = [
        f"    {result.target}: {result.connected}/{fig.subscribers} subscribers on {fig.channel}, {kind}, in"
        f" {result.connect_seconds:.1f}s; 1 gateway, 1 API process, {fig.publishers} HTTP load-generator"
        f" process(es); CPU % of one core over each window, RSS at its end",
        _API_HEADER,
    ]
    lines.extend(_api_phase_row(phase) for phase in fig.phases)
    for phase in fig.phases:
        lines.extend(_api_phase_notes(phase, result.connected))
    if result.first_error:
        lines.append(f"      first error: {result.first_error}")
    return lines


def _api_targets(result: RunResult, fig: ApiFigures, plan: ApiPlan) -> list[str]:
    bad = result.saturated
    lines = []
    rate = fig.phase(RATE)
    if rate is not None:
        met = rate.p99_ms is not None and rate.p99_ms < plan.rate_p99_ms and bool(rate.held)
        shown = "-" if rate.p99_ms is None else f"{rate.p99_ms:,.2f}"
        lines.append(
            f"    target p99 < {plan.rate_p99_ms:g} ms at {plan.rate:,.0f} requests/s, rate held [{result.target}]:"
            f" {shown}{'' if rate.held else ' (rate not held)'} {_verdict(met, bad)}"
        )
    every = bool(fig.phases) and all(phase.all_delivered for phase in fig.phases)
    lines.append(
        f"    target every publication delivered to all {fig.subscribers} subscribers [{result.target}]:"
        f" {'yes' if every else 'no'} {_verdict(every, bad)}"
    )
    return lines


_ROUND_HEADER = (
    f"      {'call':<21} {'clients':>7} {'call ms':>8} {'closed':>7} {'<=goal':>7} {'p50 ms':>8} {'p95 ms':>8}"
    f" {'p99 ms':>8} {'max ms':>8} {'other code':>10} {'no frame':>8} {'open':>5}  per gateway: closed p50/max ms"
)
_OUTAGE_HEADER = (
    f"      {'outage':<21} {'calls':>7} {'UNAVAIL':>8} {'other':>7} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}"
    f" {'restart s':>9} {'back->OK s':>10} {'failed after back':>17}"
)


def _call_ms(calls: list[CallResult]) -> str:
    """One call's latency, or min-max of several (one per user)."""
    if not calls:
        return "-"
    values = sorted(c.took_ms for c in calls)
    return f"{values[0]:.1f}" if len(values) == 1 else f"{values[0]:.0f}-{values[-1]:.0f}"


def _round_row(fig: RoundFigures) -> str:
    quartet = fig.close_ms or (None, None, None, None)
    gateways = "; ".join(f"{name} {n} {p50:.1f}/{top:.1f}" for name, (n, p50, top) in fig.per_gateway.items())
    other = sum(fig.other_codes.values())
    return (
        f"      {fig.label:<21} {fig.clients:>7} {_call_ms(fig.calls):>8} {fig.closed:>7} {fig.within_target:>7}"
        + "".join(f" {_fmt(v, '{:.1f}', 8)}" for v in quartet)
        + f" {other:>10} {fig.dropped:>8} {fig.unclosed:>5}  {gateways}"
    )


def _outage_row(fig: OutageFigures) -> str:
    p50, p95, top = fig.unavailable_ms or (None, None, None)
    other = len(fig.calls) - fig.unavailable
    return (
        f"      {fig.kind:<21} {len(fig.calls):>7} {fig.unavailable:>8} {other:>7} {_fmt(p50, '{:.1f}', 8)}"
        f" {_fmt(p95, '{:.1f}', 8)} {_fmt(top, '{:.1f}', 8)} {_fmt(fig.restart_s, '{:.2f}', 9)}"
        f" {_fmt(fig.recovered_s, '{:.3f}', 10)} {fig.failed_after_back:>17}"
    )


def _baseline_line(calls: list[CallResult]) -> str:
    ok = sorted(c.took_ms for c in calls if c.code == OK)
    if not ok:
        return f"      RevokeUser with NATS up: {len(calls)} calls, none succeeded"
    return (
        f"      RevokeUser with NATS up, same pace: {len(ok)}/{len(calls)} OK, ms p50 {ok[len(ok) // 2]:.1f}"
        f" max {ok[-1]:.1f}"
    )


def _control_details(result: RunResult, fig: ControlFigures) -> list[str]:
    main = fig.rounds[0] if fig.rounds else None
    connect = "" if main is None else f", connected in {main.connect_s:.1f}s"
    lines = [
        f"    {result.target}: {fig.clients:,} clients of {fig.users} user(s) on {fig.gateways} gateways{connect};"
        f" one call per user; ms from the call's start to each close frame; auth nats_timeout {fig.nats_timeout:g}s",
        _ROUND_HEADER,
    ]
    lines.extend(_round_row(r) for r in fig.rounds)
    lines.extend(_window_line(r.cpu) for r in fig.rounds if r.cpu is not None)
    for r in fig.rounds:
        if r.other_codes:
            codes = ", ".join(f"{code} x{count}" for code, count in sorted(r.other_codes.items()))
            lines.append(f"      {r.label}: other close codes {codes}")
    if fig.baseline:
        lines.append(_baseline_line(fig.baseline))
    if fig.outages:
        lines.append(_OUTAGE_HEADER)
        lines.extend(_outage_row(o) for o in fig.outages)
        lines.extend(_window_line(o.cpu) for o in fig.outages if o.cpu is not None)
        for o in fig.outages:
            codes = ", ".join(f"{code} x{count}" for code, count in sorted(o.codes.items()))
            back = "/healthz of the restarted nats-server" if o.kind == STOPPED else "SIGCONT"
            lines.append(f"      {o.kind}: outage calls {codes or 'none'}; back = {back}; {o.probes} probe answers")
    if result.first_error:
        lines.append(f"      first error: {result.first_error}")
    return lines


def _control_targets(result: RunResult, fig: ControlFigures, plan: ControlPlan) -> list[str]:
    bad = result.saturated
    lines = []
    main = fig.round(DISCONNECT)
    for r in (r for r in fig.rounds if r is not main):
        met = r.all_closed and r.within_target == r.clients
        lines.append(
            f"    target every client closed ({r.expected_code}) within {plan.target_s:g} s of {r.label}"
            f" [{result.target}]: {r.within_target}/{r.clients} {_verdict(met, bad)}"
        )
    bound = plan.unavailable_target_s
    for o in fig.outages:
        top = None if o.unavailable_ms is None else o.unavailable_ms[2]
        met = bool(o.calls) and o.unavailable == len(o.calls) and top is not None and top <= bound * 1000
        shown = "-" if top is None else f"max {top:,.1f} ms"
        lines.append(
            f"    target every RevokeUser UNAVAILABLE within {bound:g} s, NATS {o.kind} [{result.target}]:"
            f" {o.unavailable}/{len(o.calls)}, {shown} {_verdict(met, bad)}"
        )
    return lines


def _details(result: RunResult) -> list[str]:
    lines: list[str] = []
    if result.skipped:
        return [f"    {result.target}: not run ({result.skipped})"]
    if result.failure:
        lines.extend(f"    {line}" for line in result.failure.splitlines()[:25])
        return lines
    if result.storm is not None:
        return _storm_details(result, result.storm)
    if result.presence is not None:
        return _presence_details(result, result.presence)
    if result.api is not None:
        return _api_details(result, result.api)
    if result.control is not None:
        return _control_details(result, result.control)
    cpu = " ".join(f"{name}={pct:.0f}%" for name, pct in result.loadgen_cpu.items())
    nats = "" if result.nats_cpu is None else f"; nats-server CPU {result.nats_cpu:.0f}%"
    lines.append(
        f"    {result.target}: connected {result.connected}/{result.connections} in "
        f"{result.connect_seconds:.1f}s; loadgen CPU {cpu}{nats}"
    )
    lines.append(
        f"      host CPU {result.host_cpu:.0f}% of all cores; outside the bench's processes "
        f"{max(0.0, result.other_cpu):.0f}% of a core (other processes, kernel){_busy_note(result)}"
    )
    if result.published:
        share = 100.0 * result.delivered / result.expected if result.expected else 0.0
        lines.append(
            f"      published {result.published:,}, delivered {result.delivered:,}/"
            f"{result.expected:,} ({share:.1f}%), disconnects {result.disconnects}, errors {result.errors}"
        )
    if not result.published:
        lines.append(
            f"      disconnects {result.disconnects}, errors {result.errors}, server pings answered {result.pings}"
        )
    if result.listen_overflows:
        lines.append(f"      TCP listen queue overflows while connecting: {result.listen_overflows}")
    if result.first_error:
        lines.append(f"      first error: {result.first_error}")
    return lines


def _busy_note(result: RunResult) -> str:
    if result.host_cpu >= 95.0:
        return " - HOST CPU-BOUND: figures are limited by this machine"
    return ""


def _goal_line(goal: Goal, result: RunResult) -> str:
    value = result.metric(goal.metric)
    met = goal.met(value) if not result.failure else None
    if result.goal_miss and not result.failure:
        met = False
    verdict = "n/a" if met is None else ("PASS" if met else "MISS")
    if result.goal_miss and met is False:
        verdict += f" ({result.goal_miss})"
    if result.saturated and met is not None:
        verdict += " (INVALID: load generator saturated)"
    shown = "-" if value is None or result.failure else f"{value:,.2f}"
    return f"    target {goal.label} [{result.target}]: {shown} {verdict}"


def render(scenarios: list[Scenario], results: list[RunResult], preamble: list[str]) -> str:
    """Return the whole report as text."""
    lines = [*preamble, "", _header(), "-" * len(_header())]
    for scn in scenarios:
        runs = {r.target: r for r in results if r.scenario == scn.name}
        if not runs:
            continue
        for target in (BASELINE, GATEWAY):
            if target in runs:
                lines.append(_row(runs[target]))
        if BASELINE in runs and GATEWAY in runs and not runs[BASELINE].skipped:
            lines.append(_ratio_row(runs[GATEWAY], runs[BASELINE]))
        for target in (BASELINE, GATEWAY):
            if target in runs:
                lines.extend(_details(runs[target]))
                run = runs[target]
                if not run.skipped and target == GATEWAY:  # targets are Meshcast's, not the baseline's
                    lines.append(_goal_line(scn.goal, run))
                if run.presence is not None and scn.presence is not None and not run.failure:
                    lines.extend(_presence_targets(run, run.presence, scn.presence.presence_p99_ms))
                if run.api is not None and scn.api is not None and not run.failure:
                    lines.extend(_api_targets(run, run.api, scn.api))
                if run.control is not None and scn.control is not None and not run.failure:
                    lines.extend(_control_targets(run, run.control, scn.control))
        lines.append("")
    return "\n".join(lines)
