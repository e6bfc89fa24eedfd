"""Meshcast gateway benchmark, compared with a nats-server websocket baseline.

What it measures, per scenario and per target:

* deliveries/s: publications received by all subscribers during the measured
  window, divided by the time from the window start to the last receive;
* latency p50/p95/p99/max: receive time minus the ``time.time_ns()`` the
  publisher embedded in the payload (same host, same clock);
* RSS per connection: server RSS (process tree) after all subscribers are
  connected and subscribed minus RSS before, divided by the connections;
* CPU of every load-generator process over the window; a process above
  ``--saturation`` percent of one core makes the result INVALID.

How: every run gets a fresh nats-server (JetStream + websocket listener on
free loopback ports) and, for the gateway target, a fresh
``python -m meshcast.gateway``. Subscribers live in separate spawned worker
processes using picows. The gateway target speaks the Centrifugo client
protocol (JSON) and publishes with the ``publish`` command; the baseline
target subscribes over nats-server's own websocket listener with the NATS text
protocol and publishes with nats-py. Scenarios: ``fanout`` (1 channel, many
subscribers, closed-loop full-speed publisher), ``channels`` (many channels,
fixed publication rate), ``idle`` (many idle subscribed connections), ``storm``
(reconnect storm with recovery, gateway only), ``presence`` (join storm and
presence queries, gateway only), ``api`` and ``api-history`` (publishes
through the server API, gateway only), ``control`` (DisconnectUser and
RevokeUser through the auth service, and its answers while NATS is away,
gateway only).

storm: a history service (``python -m meshcast.history``) is started before the
gateway, with a ``storm`` namespace (history + recovery). N clients subscribe
to ``storm:0`` (keeping epoch/offset), all close their sockets, M publications
are published through the gateway (every ack awaited: stored in JetStream),
then all N reconnect at the same instant and subscribe with ``recover``. Per
client: time from the common start to a subscribe reply with ``recovered:
true`` and exactly the M missed publications (each once, offsets strictly
increasing); failures are counted by kind. The p50..max columns are those
per-client times, deliv/s the recovered publications per second, srv CPU%
the gateway; history service and nats-server CPU are listed below the row.
nats-server's websocket has no recovery, so the storm has no baseline.

presence: a presence service (``python -m meshcast.presence``) and two
gateways on one nats-server, a ``pres`` namespace (presence + join_leave). An
observer client subscribes to ``pres:0`` with ``join_leave: true`` on the
first gateway; then N clients (users user0..user{U-1}) subscribe to ``pres:0``,
alternately on each gateway, paced evenly over a W-second window by the worker
processes. Reported: the actual window, the time until every subscribe reply,
the time until presence_stats shows exactly N+1 clients (polled by the
observer, bounded), the join pushes the observer got (target: N, none lost).
Then worker 0 sends presence_stats requests, alternating between a client on
each gateway, and then presence requests (each reply must list N+1 members),
timed from the send to the arrival of the reply frame. The row's p50..max are
the presence_stats times, srv CPU% the presence service over the join storm,
KiB/conn the presence service's RSS growth per member; the CPU of every
process per phase and the presence latencies are listed below the row.
nats-server has no presence, so there is no baseline.

api: one nats-server, one gateway and one server API process (``python -m
meshcast.api``, its own random key); 100 subscribers (``--api-subscribers``)
on ``bench:0`` through the subscriber workers, and HTTP/1.1 keep-alive
publishers (``--api-publishers`` processes, ``bench/apiload.py``) posting to
the API's ``/api/publish`` and ``/api/batch``, each publication carrying its
send time. Three phases (``--api-phases``), each with its warmup, each drained
before the next: ``closed``, full speed with ``--api-concurrency`` (32)
requests in flight; ``rate``, open loop at ``--api-rate`` (1,000) requests/s
over a pool of ``--api-rate-connections`` (16), held when every due request
went out within 50 ms of its due time and 99% were answered; ``batch``,
requests of ``--api-batch-size`` (100) publish commands, ``--api-batch-concurrency``
(4) in flight. Per phase: requests/s and publications/s over the window,
request latency p50..max (first byte written to last byte read), deliveries/s
and delivery latency, whether every publication (warmups included) reached
every subscriber after a bounded drain (``--api-drain-timeout``), the CPU of
the API, gateway, nats-server and every load generator over the window, the
API's and gateway's RSS at its end. The row shows the closed phase (srv CPU% =
the API process, KiB/conn = gateway RSS per subscriber); the phases are listed
below it. Goals: closed-loop requests/s (``--api-target``, 5,000) and p99 at
the fixed rate (``--api-p99-target``, 5 ms). ``api-history`` (only on request)
does the same on a channel with history (the history service is started; a
publish is answered once JetStream stored it). nats-server has no server API,
so there is no baseline. In the default set: ``api``, about 30 s.

control: one nats-server, the auth service (``python -m meshcast.auth``, own
API key, the gateways' HMAC secret, ``MESHCAST_NATS_TIMEOUT`` =
``--control-nats-timeout``, 1 s) and ``--control-gateways`` (2) gateways; two
socket workers hold ``--control-clients`` (1,000) clients, alternately on each
gateway, of ``--control-users`` (1) users, each subscribed to ``bench:0``; a
caller process calls the gRPC API (``authorization: apikey``, 30 s deadline).
Rounds: the clients connect, the caller calls DisconnectUser once per user;
per client, the time from its user's call start to its close frame with 3503
(how many closed so within ``--control-close-timeout``, 10 s, with another
code, without a frame, not at all), and the call's own latency. DisconnectUser
runs twice: on fresh gateways (``cold``, their first mass close, listed) and
warm (the row; srv CPU% = the busier gateway); then RevokeUser (3500). Goal:
every client closed within ``--control-target`` (2 s). Outages
(``--control-outages``), no client connected: RevokeUser every
``--control-call-interval`` (0.1 s) for ``--control-outage`` (2 s) with NATS
up, then with nats-server ``stopped`` (the client knows it is disconnected:
fast UNAVAILABLE) and ``frozen`` (SIGSTOP: nothing answers, UNAVAILABLE after
the service's NATS timeout, not the caller's deadline; target: within it + 0.5
s), each call timed to its answer; then NATS comes back (``stopped``: started
again on the same ports and store, timed to /healthz; ``frozen``: SIGCONT)
while the caller calls every 20 ms: the time to the first success. No
baseline. In the default set, about 25 s.

Every gateway is started with its per-IP connect rate and per-connection
command rate limits lifted (all load comes from 127.0.0.1); ``--gateway-limits``
keeps the gateway's own limits.

Caveats: load generator and servers share this machine's cores. A run whose
host CPU is >= 95% busy is flagged HOST CPU-BOUND (figures are a lower bound
for the server). The fanout latency includes the queueing of ``--window``
publications in flight; fanout throughput grows with the window (batching).

Usage: python bench/run.py [--scenario fanout|channels|idle|storm|presence|api|api-history|control ...]
                          [--duration S]
Exit code: 0 when every run completed, 2 when the gateway could not start,
1 on any other failed run. Figures are benchmark results, never assertions.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from types import FrameType

if __package__ in (None, ""):  # started as `python bench/run.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.apibench import run_api_scenario
from bench.apiload import PHASES
from bench.apimodel import API_HISTORY_NAMESPACE, ApiPlan
from bench.controlbench import run_control_scenario
from bench.controlmodel import OUTAGES, ControlPlan
from bench.loadgen import BASELINE, CLOSED_LOOP, FIXED_RATE, GATEWAY
from bench.report import render
from bench.scenarios import (
    API_MODE,
    CONTROL_MODE,
    GATEWAY_ONLY,
    IDLE,
    PRESENCE_MODE,
    STORM,
    Goal,
    Options,
    PresencePlan,
    RunResult,
    Scenario,
    run_scenario,
)
from bench.stack import LIFTED_GATEWAY_LIMITS, raise_nofile_limit

SCENARIOS = ("fanout", "channels", "idle", "storm", "presence", "api", "api-history", "control")
# Run when no --scenario is given (api-history only on request).
DEFAULT_SCENARIOS = ("fanout", "channels", "idle", "storm", "presence", "api", "control")
# The recovery limit a namespace accepts (recovery_max_publications).
_MAX_STORM_PUBLICATIONS = 100_000
_FD_MARGIN = 256


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _add_scenario_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("scenario sizes and targets")
    group.add_argument("--fanout-subscribers", type=_positive_int, default=1000)
    group.add_argument("--fanout-target", type=float, default=100_000.0, help="deliveries/s goal")
    group.add_argument("--channels-count", type=_positive_int, default=100)
    group.add_argument("--channels-subscribers", type=_positive_int, default=10, help="per channel")
    group.add_argument("--channels-rate", type=_positive_float, default=2000.0, help="publications/s in total")
    group.add_argument("--channels-p99-target", type=float, default=10.0, help="p99 latency goal, ms")
    group.add_argument("--idle-connections", type=_positive_int, default=10_000)
    group.add_argument("--idle-channels", type=_positive_int, default=1000)
    group.add_argument("--idle-rss-target", type=float, default=20.0, help="KiB per connection goal")
    group.add_argument("--storm-clients", type=_positive_int, default=1000, help="clients that reconnect at once")
    group.add_argument("--storm-publications", type=_storm_publications, default=100, help="missed while away")
    group.add_argument("--storm-target", type=_positive_float, default=5.0, help="seconds until all recovered, goal")
    group.add_argument("--presence-clients", type=_positive_int, default=10_000, help="clients in the join storm")
    group.add_argument("--presence-users", type=_positive_int, default=10_000, help="distinct users among them")
    group.add_argument("--presence-gateways", type=_positive_int, default=2, help="gateways sharing the clients")
    group.add_argument("--presence-window", type=_positive_float, default=10.0, help="seconds the joins are paced over")
    group.add_argument("--presence-stats-requests", type=_non_negative_int, default=500, help="timed presence_stats")
    group.add_argument("--presence-requests", type=_non_negative_int, default=50, help="timed presence requests")
    group.add_argument("--presence-query-concurrency", type=_positive_int, default=1, help="requests in flight")
    group.add_argument("--presence-stats-p99-target", type=_positive_float, default=5.0, help="presence_stats p99, ms")
    group.add_argument("--presence-p99-target", type=_positive_float, default=100.0, help="presence p99 goal, ms")
    group.add_argument("--api-subscribers", type=_positive_int, default=100, help="on the one channel published to")
    group.add_argument("--api-target", type=_positive_float, default=5000.0, help="closed-loop publish requests/s goal")
    group.add_argument("--api-concurrency", type=_positive_int, default=32, help="closed loop: requests in flight")
    group.add_argument("--api-rate", type=_positive_float, default=1000.0, help="open loop: publish requests/s")
    group.add_argument("--api-rate-connections", type=_positive_int, default=16, help="open loop: connection pool")
    group.add_argument("--api-p99-target", type=_positive_float, default=5.0, help="p99 goal at --api-rate, ms")
    group.add_argument("--api-batch-size", type=_positive_int, default=100, help="publish commands per batch")
    group.add_argument("--api-batch-concurrency", type=_positive_int, default=4, help="batch: requests in flight")
    group.add_argument("--api-publishers", type=_positive_int, default=1, help="HTTP load-generator processes")
    group.add_argument(
        "--api-phases", type=_phases, default=PHASES, help=f"comma-separated, in order (default {','.join(PHASES)})"
    )
    group.add_argument("--control-clients", type=_positive_int, default=1000, help="closed by each call")
    group.add_argument("--control-users", type=_positive_int, default=1, help="one call per user")
    group.add_argument("--control-gateways", type=_positive_int, default=2, help="gateways sharing the clients")
    group.add_argument("--control-target", type=_positive_float, default=2.0, help="s from the call to every close")
    group.add_argument("--control-nats-timeout", type=_positive_float, default=1.0, help="the auth service's, s")
    group.add_argument("--control-outage", type=_positive_float, default=2.0, help="s of RevokeUser calls per outage")
    group.add_argument("--control-call-interval", type=_positive_float, default=0.1, help="s between outage calls")
    group.add_argument(
        "--control-outages", type=_outages, default=OUTAGES, help=f"comma-separated (default {','.join(OUTAGES)})"
    )


def _phases(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in PHASES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"comma-separated subset of {','.join(PHASES)}")
    return names


def _outages(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if any(name not in OUTAGES for name in names):
        raise argparse.ArgumentTypeError(f"comma-separated subset of {','.join(OUTAGES)} (may be empty)")
    return names


def _storm_publications(text: str) -> int:
    value = _positive_int(text)
    if value > _MAX_STORM_PUBLICATIONS:
        raise argparse.ArgumentTypeError(f"must be <= {_MAX_STORM_PUBLICATIONS}")
    return value


def _add_run_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run control (every wait is bounded)")
    group.add_argument("--duration", type=_positive_float, default=5.0, help="measured seconds")
    group.add_argument("--warmup", type=float, default=1.0, help="unmeasured publishing before the window")
    group.add_argument("--workers", type=_positive_int, default=2, help="subscriber processes")
    group.add_argument("--concurrency", type=_positive_int, default=200, help="connects in flight per worker")
    group.add_argument("--window", type=_positive_int, default=16, help="fanout: publications in flight")
    group.add_argument("--ack-window", type=_positive_int, default=256, help="unacknowledged publish commands")
    group.add_argument("--connect-timeout", type=_positive_float, default=60.0)
    group.add_argument("--command-timeout", type=_positive_float, default=10.0)
    group.add_argument("--drain-timeout", type=_positive_float, default=10.0)
    group.add_argument("--drain-idle", type=_positive_float, default=1.0, help="stop draining after no progress")
    group.add_argument("--settle", type=float, default=1.0, help="pause before RSS samples")
    group.add_argument("--idle-hold", type=_positive_float, default=2.0)
    group.add_argument("--saturation", type=float, default=90.0, help="loadgen CPU%% of one core => INVALID")
    group.add_argument("--max-samples", type=_positive_int, default=3_000_000, help="latency samples per worker")
    group.add_argument(
        "--storm-timeout", type=_positive_float, default=30.0, help="storm: per-client limit for reconnect+recover"
    )
    group.add_argument(
        "--storm-concurrency", type=int, default=0, help="storm: reconnects in flight per worker (0: all at once)"
    )
    group.add_argument(
        "--presence-converge-timeout",
        type=_positive_float,
        default=30.0,
        help="presence: limit for presence_stats to show every member and for the join pushes",
    )
    group.add_argument(
        "--presence-query-timeout", type=_positive_float, default=120.0, help="presence: limit per request phase"
    )
    group.add_argument(
        "--api-drain-timeout",
        type=_positive_float,
        default=60.0,
        help="api: limit per phase for every publication to reach every subscriber (stops earlier on no progress)",
    )
    group.add_argument("--control-close-timeout", type=_positive_float, default=10.0, help="control: s for closes")
    group.add_argument(
        "--control-recovery-timeout", type=_positive_float, default=30.0, help="control: s for a success after NATS"
    )


def _add_stack_args(parser: argparse.ArgumentParser) -> None:
    venv_bin = Path(sys.executable).parent
    group = parser.add_argument_group("processes under test")
    group.add_argument("--target", choices=("both", BASELINE, GATEWAY), default="both")
    group.add_argument("--nats-server", default=str(venv_bin / "nats-server"))
    group.add_argument("--nats-timeout", type=_positive_float, default=15.0)
    group.add_argument("--gateway-cmd", default=f"{shlex.quote(sys.executable)} -m meshcast.gateway")
    group.add_argument("--gateway-timeout", type=_positive_float, default=20.0, help="wait for /health")
    group.add_argument(
        "--gateway-limits",
        action="store_true",
        help="keep the gateway's per-IP connect and per-connection command rate limits (lifted by default:"
        " all load comes from 127.0.0.1)",
    )
    group.add_argument("--history-cmd", default=f"{shlex.quote(sys.executable)} -m meshcast.history")
    group.add_argument("--history-timeout", type=_positive_float, default=60.0, help="wait for /ready (storm)")
    group.add_argument("--presence-cmd", default=f"{shlex.quote(sys.executable)} -m meshcast.presence")
    group.add_argument("--presence-timeout", type=_positive_float, default=60.0, help="wait for /ready (presence)")
    group.add_argument("--api-cmd", default=f"{shlex.quote(sys.executable)} -m meshcast.api")
    group.add_argument("--api-timeout", type=_positive_float, default=60.0, help="wait for /ready (api)")
    group.add_argument("--auth-cmd", default=f"{shlex.quote(sys.executable)} -m meshcast.auth")
    group.add_argument("--auth-timeout", type=_positive_float, default=60.0, help="wait for /ready (control)")
    group.add_argument("--secret", default="meshcast-bench-secret-" + os.urandom(8).hex())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--scenario", action="append", choices=SCENARIOS, help=f"repeatable; default: {' '.join(DEFAULT_SCENARIOS)}"
    )
    _add_scenario_args(parser)
    _add_run_args(parser)
    _add_stack_args(parser)
    return parser.parse_args(argv)


def build_scenarios(args: argparse.Namespace) -> list[Scenario]:
    fanout_goal = Goal("deliveries_per_s", ">=", args.fanout_target, f"deliveries/s >= {args.fanout_target:,.0f}")
    p99_goal = Goal("p99_ms", "<", args.channels_p99_target, f"p99 < {args.channels_p99_target:g} ms")
    rss_goal = Goal("rss_per_conn_kib", "<=", args.idle_rss_target, f"RSS/conn <= {args.idle_rss_target:g} KiB")
    storm_goal = Goal(
        "recovered_all_s", "<=", args.storm_target, f"every client recovered within {args.storm_target:g} s"
    )
    every = [
        Scenario(
            name="fanout", connections=args.fanout_subscribers, channels=1, mode=CLOSED_LOOP, rate=0.0, goal=fanout_goal
        ),
        Scenario(
            name="channels",
            connections=args.channels_count * args.channels_subscribers,
            channels=args.channels_count,
            mode=FIXED_RATE,
            rate=args.channels_rate,
            goal=p99_goal,
        ),
        Scenario(
            name="idle",
            connections=args.idle_connections,
            channels=args.idle_channels,
            mode=IDLE,
            rate=0.0,
            goal=rss_goal,
        ),
        Scenario(
            name="storm",
            connections=args.storm_clients,
            channels=1,
            mode=STORM,
            rate=0.0,
            goal=storm_goal,
            publications=args.storm_publications,
        ),
        Scenario(
            name="presence",
            connections=args.presence_clients,
            channels=1,
            mode=PRESENCE_MODE,
            rate=0.0,
            goal=Goal(
                "p99_ms",
                "<",
                args.presence_stats_p99_target,
                f"presence_stats p99 < {args.presence_stats_p99_target:g} ms",
            ),
            presence=PresencePlan(
                gateways=args.presence_gateways,
                users=args.presence_users,
                window_s=args.presence_window,
                stats_requests=args.presence_stats_requests,
                presence_requests=args.presence_requests,
                query_concurrency=args.presence_query_concurrency,
                presence_p99_ms=args.presence_p99_target,
                converge_timeout=args.presence_converge_timeout,
                query_timeout=args.presence_query_timeout,
            ),
        ),
    ]
    every.extend(_api_scenarios(args))
    every.append(_control_scenario(args))
    chosen = set(args.scenario or DEFAULT_SCENARIOS)
    return [scn for scn in every if scn.name in chosen]


def _api_scenarios(args: argparse.Namespace) -> list[Scenario]:
    goal = Goal("requests_per_s", ">=", args.api_target, f"publish requests/s >= {args.api_target:,.0f}")
    scenarios = []
    for name, history in (("api", False), ("api-history", True)):
        plan = ApiPlan(
            history=history,
            publishers=args.api_publishers,
            closed_connections=args.api_concurrency,
            rate=args.api_rate,
            rate_connections=args.api_rate_connections,
            batch_size=args.api_batch_size,
            batch_connections=args.api_batch_concurrency,
            phases=args.api_phases,
            rate_p99_ms=args.api_p99_target,
            drain_timeout=args.api_drain_timeout,
        )
        namespace = API_HISTORY_NAMESPACE if history else "bench"
        scenarios.append(
            Scenario(
                name=name,
                connections=args.api_subscribers,
                channels=1,
                mode=API_MODE,
                rate=args.api_rate,
                goal=goal,
                api=plan,
                namespace=namespace,
            )
        )
    return scenarios


def _control_scenario(args: argparse.Namespace) -> Scenario:
    target = args.control_target
    return Scenario(
        name="control",
        connections=args.control_clients,
        channels=1,
        mode=CONTROL_MODE,
        rate=0.0,
        goal=Goal("max_ms", "<=", target * 1000, f"every client closed (3503) within {target:g} s, max ms"),
        control=ControlPlan(
            gateways=args.control_gateways,
            users=min(args.control_users, args.control_clients),
            target_s=target,
            close_timeout=args.control_close_timeout,
            nats_timeout=args.control_nats_timeout,
            outages=args.control_outages,
            outage_s=args.control_outage,
            call_interval_s=args.control_call_interval,
            recovery_timeout=args.control_recovery_timeout,
        ),
    )


def build_options(args: argparse.Namespace) -> Options:
    return Options(
        workers=args.workers,
        concurrency=args.concurrency,
        connect_timeout=args.connect_timeout,
        command_timeout=args.command_timeout,
        warmup=max(0.0, args.warmup),
        duration=args.duration,
        window=args.window,
        ack_window=args.ack_window,
        drain_timeout=args.drain_timeout,
        drain_idle=args.drain_idle,
        settle=max(0.0, args.settle),
        idle_hold=args.idle_hold,
        saturation=args.saturation,
        max_samples=args.max_samples,
        nats_binary=args.nats_server,
        nats_timeout=args.nats_timeout,
        gateway_argv=shlex.split(args.gateway_cmd),
        gateway_timeout=args.gateway_timeout,
        secret=args.secret,
        history_argv=shlex.split(args.history_cmd),
        history_timeout=args.history_timeout,
        storm_timeout=args.storm_timeout,
        storm_concurrency=max(0, args.storm_concurrency),
        presence_argv=shlex.split(args.presence_cmd),
        presence_timeout=args.presence_timeout,
        api_argv=shlex.split(args.api_cmd),
        api_timeout=args.api_timeout,
        auth_argv=shlex.split(args.auth_cmd),
        auth_timeout=args.auth_timeout,
        gateway_env={} if args.gateway_limits else dict(LIFTED_GATEWAY_LIMITS),
    )


def _fd_problem(scn: Scenario, opts: Options, soft_limit: int) -> str:
    """Explain why RLIMIT_NOFILE cannot hold the scenario, or return ''."""
    per_worker = -(-scn.connections // opts.workers) + _FD_MARGIN
    server = scn.connections + _FD_MARGIN
    need = max(per_worker, server)
    if soft_limit >= need:
        return ""
    return f"RLIMIT_NOFILE too low: need about {need} descriptors per process, limit is {soft_limit}"


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


_RUNNERS = {API_MODE: run_api_scenario, CONTROL_MODE: run_control_scenario}


def _run_all(scenarios: list[Scenario], targets: list[str], opts: Options, soft_limit: int) -> list[RunResult]:
    results: list[RunResult] = []
    gateway_down = ""
    for scn in scenarios:
        problem = _fd_problem(scn, opts, soft_limit)
        runner = _RUNNERS.get(scn.mode, run_scenario)
        for target in targets:
            if scn.mode in GATEWAY_ONLY and target != GATEWAY:
                results.append(runner(scn, target, opts))  # skipped: no baseline
                continue
            if problem or (target == GATEWAY and gateway_down):
                why = problem or f"not run: {gateway_down.splitlines()[0]}"
                results.append(RunResult(scn.name, target, scn.connections, failure=why))
                continue
            started = time.monotonic()
            print(f"[bench] {scn.name} / {target} ...", file=sys.stderr, flush=True)
            result = runner(scn, target, opts)
            status = result.failure.splitlines()[0] if result.failure else "done"
            print(f"[bench]   {status} ({time.monotonic() - started:.1f}s)", file=sys.stderr, flush=True)
            if target == GATEWAY and result.start_failed:
                gateway_down = result.failure
            results.append(result)
    return results


def _exit_code(results: list[RunResult]) -> int:
    if any(r.target == GATEWAY and r.start_failed for r in results):
        return 2
    return 1 if any(r.failure for r in results) else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    soft, hard = raise_nofile_limit()
    signal.signal(signal.SIGTERM, _on_sigterm)
    scenarios = build_scenarios(args)
    opts = build_options(args)
    targets = [BASELINE, GATEWAY] if args.target == "both" else [args.target]
    started = time.monotonic()
    try:
        results = _run_all(scenarios, targets, opts, soft)
    except KeyboardInterrupt:
        print("[bench] interrupted; all child processes were stopped", file=sys.stderr)
        return 130
    preamble = [
        "Meshcast gateway bench (baseline = nats-server websocket, same scenario, same invocation)",
        (
            f"host CPUs {os.cpu_count()}, RLIMIT_NOFILE {soft}/{hard}, {opts.workers} subscriber workers"
            f" + 1 publisher, window {opts.duration:g}s after {opts.warmup:g}s warmup,"
            f" total {time.monotonic() - started:.0f}s"
        ),
        (
            f"fanout: closed loop, at most {opts.window} publications in flight; channels: {args.channels_rate:g}"
            f" publications/s round-robin; idle: {args.idle_channels} channels; {opts.concurrency} connects in"
            " flight per worker"
        ),
        (
            f"storm: {args.storm_clients} clients on 1 history channel miss {args.storm_publications} publications,"
            " then reconnect at once and recover; p50..max ms = start of the reconnect to the verified subscribe"
            " reply, per client; deliv/s = recovered publications/s"
        ),
        (
            f"presence: {args.presence_clients} clients ({min(args.presence_users, args.presence_clients)} users)"
            f" + 1 observer join pres:0 on {args.presence_gateways} gateways over {args.presence_window:g}s;"
            " p50..max ms = presence_stats request to reply frame; srv CPU% = presence service over the join"
            " storm; KiB/conn = presence service RSS growth per member"
        ),
        (
            f"api: {args.api_subscribers} subscribers on 1 channel of 1 gateway; {args.api_publishers} HTTP keep-alive"
            " load-generator process(es) publish through 1 API process: closed loop with"
            f" {args.api_concurrency} requests in flight, open loop at {args.api_rate:g} requests/s over"
            f" {args.api_rate_connections} connections, batches of {args.api_batch_size} with"
            f" {args.api_batch_concurrency} in flight; the row is the closed loop (p50..max ms = request latency,"
            " first byte written to last byte read; srv CPU% = the API process; KiB/conn = gateway RSS per"
            " subscriber), every phase is listed below it"
        ),
        f"control: {args.control_clients} clients on {args.control_gateways} gateways; p50..max ms = warm"
        " DisconnectUser call start to each close frame (3503), srv CPU% = the busier gateway; the other rounds and"
        " the outages (RevokeUser with NATS stopped or frozen) below it",
        "lg CPU%max = busiest load-generator process (% of one core); srv CPU% = process under test"
        " (baseline: nats-server; gateway: the gateway only, its nats-server is listed below)",
    ]
    print(render(scenarios, results, preamble))
    code = _exit_code(results)
    if code == 2:
        print("GATEWAY DID NOT START: no gateway figures were measured (see FAILED rows).", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
