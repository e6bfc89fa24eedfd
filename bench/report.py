"""Plain-text report: one table row per (scenario, target), ratios, targets."""

from __future__ import annotations

from collections.abc import Callable

from bench.loadgen import BASELINE, GATEWAY
from bench.scenarios import Goal, RunResult, Scenario, StormFigures

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


def _details(result: RunResult) -> list[str]:
    lines: list[str] = []
    if result.skipped:
        return [f"    {result.target}: not run ({result.skipped})"]
    if result.failure:
        lines.extend(f"    {line}" for line in result.failure.splitlines()[:25])
        return lines
    if result.storm is not None:
        return _storm_details(result, result.storm)
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
                if not runs[target].skipped:
                    lines.append(_goal_line(scn.goal, runs[target]))
        lines.append("")
    return "\n".join(lines)
