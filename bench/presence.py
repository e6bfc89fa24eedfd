"""Load-generator processes of the ``presence`` scenario (join storm, presence queries).

A presence worker prepares its share of clients (a JWT each; global client
``g`` is user ``user{g % users}``), spread over the gateways in turn. On
``join`` (a wall-clock start in ns, common to every worker) it connects and
subscribes each client at its own instant: global client ``g`` of ``total``
starts at ``start + g * window / total``, so all workers together open
``total / window`` connections per second. The sockets stay open.

On ``query`` it sends presence or presence_stats requests from one client
per gateway, alternating between the gateways, ``concurrency`` in flight,
and times each from the send to the arrival of the reply's frame (before the
client parses it); a presence reply is then checked for the expected number
of members.

The observer is one more client (on the first gateway), subscribed with
``join_leave: true`` before the storm. It counts join and leave pushes as they
come; on ``converge`` it polls presence_stats until the channel holds exactly
the expected clients, then waits for the missing join pushes (bounded).

Pipe messages: parent -> process ``join`` (start_ns), ``query`` (QueryPlan),
``converge`` (ConvergePlan), ``close``; process -> parent ``ready``
(ReadyInfo), ``joined`` (JoinReport), ``queried`` (QueryReport),
``converged`` (ObserverReport), ``failed`` (str).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import uvloop
from picows import WSFrame, WSTransport

from bench.clients import CentrifugoConn, CommandError, open_centrifugo
from bench.loadgen import Control, ReadyInfo, make_token, prepare_child

STATS = "presence_stats"
PRESENCE = "presence"
OBSERVER_USER = "presence-observer"


class PresenceConn(CentrifugoConn):
    """A gateway client that time-stamps reply frames and counts join/leave pushes."""

    def __init__(self, pushes: PushCounter | None = None) -> None:
        super().__init__(None)
        self.pushes = pushes
        self.frame_ns = 0
        self._reply_ns: dict[int, int] = {}

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        self.frame_ns = time.time_ns()
        super().on_ws_frame(transport, frame)

    def _on_line(self, line: bytes) -> None:
        if line.strip() == b"{}":
            super()._on_line(line)
            return
        try:
            message = json.loads(line)
        except ValueError:
            super()._on_line(line)  # records the error
            return
        if not isinstance(message, dict):
            return
        push = message.get("push")
        if isinstance(push, dict):
            if self.pushes is not None:
                self.pushes.add(push, self.frame_ns)
            return
        cmd_id = message.get("id")
        if isinstance(cmd_id, int):
            if cmd_id in self._reply_ns:
                self._reply_ns[cmd_id] = self.frame_ns
            self._on_reply(cmd_id, message)

    async def timed(self, body: dict[str, Any], limit_s: float) -> tuple[dict[str, Any], int]:
        """Send one command; return its reply and the ns from the send to the reply's frame."""
        cmd_id = self.next_id()
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters[cmd_id] = fut
        data = json.dumps({"id": cmd_id, **body}, separators=(",", ":")).encode()
        self._reply_ns[cmd_id] = 0
        sent_ns = time.time_ns()
        self.send(data)
        try:
            reply = await asyncio.wait_for(fut, limit_s)
        finally:
            self._waiters.pop(cmd_id, None)
            recv_ns = self._reply_ns.pop(cmd_id, 0)
        took = recv_ns - sent_ns
        if "error" in reply:
            raise CommandError(f"{next(iter(body))}: {reply['error']}")
        return reply, took


@dataclass
class PushCounter:
    """Join/leave pushes seen by the observer (its own user's joins apart)."""

    own_user: str
    joins: int = 0
    own_joins: int = 0
    leaves: int = 0
    other: int = 0
    clients: set[str] = field(default_factory=set)
    last_ns: int = 0

    def add(self, push: dict[str, Any], now_ns: int) -> None:
        self.last_ns = now_ns
        for kind in ("join", "leave"):
            body = push.get(kind)
            if isinstance(body, dict):
                info = body.get("info")
                info = info if isinstance(info, dict) else {}
                if kind == "leave":
                    self.leaves += 1
                elif info.get("user") == self.own_user:
                    self.own_joins += 1
                else:
                    self.joins += 1
                    self.clients.add(str(info.get("client", "")))
                return
        self.other += 1


# ---------------------------------------------------------------- jobs and reports


@dataclass(frozen=True)
class PresenceJob:
    gateway_urls: list[str]
    secret: str
    channel: str
    slot: int
    workers: int
    total: int
    users: int
    window_s: float
    max_in_flight: int
    connect_timeout: float
    command_timeout: float
    control_timeout: float

    def global_index(self, k: int) -> int:
        return self.slot + k * self.workers

    def gateway_of(self, k: int) -> int:
        return (k + self.slot) % len(self.gateway_urls)


@dataclass(frozen=True)
class ObserverJob:
    gateway_url: str
    secret: str
    channel: str
    command_timeout: float
    control_timeout: float


@dataclass(frozen=True)
class QueryPlan:
    kind: str  # STATS or PRESENCE
    count: int
    concurrency: int
    expected_members: int
    deadline_s: float


@dataclass(frozen=True)
class ConvergePlan:
    clients: int
    users: int
    joins: int
    timeout_s: float
    poll_s: float
    join_idle_s: float


@dataclass
class JoinReport:
    attempted: int
    per_gateway: list[int]
    failures: dict[str, int]
    first_error: str
    # ns from each client's actual start to its subscribe reply.
    took_ns: array[int]
    first_start_ns: int
    last_start_ns: int
    last_reply_ns: int
    # Largest delay of an actual start behind its scheduled instant.
    max_lag_ns: int
    # Distinct user numbers of the subscribed clients.
    users: list[int]


@dataclass
class QueryReport:
    kind: str
    sent: int
    # per gateway index: ns from send to reply frame
    took_ns: dict[int, array[int]]
    errors: int
    mismatches: int
    first_error: str
    seconds: float
    reply_bytes: int = 0


@dataclass
class ObserverReport:
    converged_ns: int  # wall time presence_stats first showed exactly the expected clients, or 0
    last_clients: int
    last_users: int
    polls: int
    poll_errors: int
    joins: int
    distinct_joins: int
    own_joins: int
    leaves: int
    other_pushes: int
    joins_done_ns: int  # wall time the expected joins were all in, or 0
    last_push_ns: int
    first_error: str
    disconnected: bool


# ---------------------------------------------------------------- worker


@dataclass
class _Client:
    user: int
    token: str
    gateway: int
    conn: PresenceConn | None = None


def _subscribe_body(channel: str, join_leave: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"channel": channel}
    if join_leave:
        body["join_leave"] = True
    return {"subscribe": body}


async def _join_one(job: PresenceJob, client: _Client) -> None:
    conn = await open_centrifugo(
        job.gateway_urls[client.gateway], client.token, None, job.command_timeout, factory=PresenceConn
    )
    try:
        await conn.command(_subscribe_body(job.channel), job.command_timeout)
    except BaseException:
        conn.close()
        raise
    assert isinstance(conn, PresenceConn)
    client.conn = conn


@dataclass
class _Timing:
    took: array[int] = field(default_factory=lambda: array("q"))
    first_start: int = 0
    last_start: int = 0
    last_reply: int = 0
    max_lag: int = 0


async def _join_all(job: PresenceJob, clients: list[_Client], start_ns: int) -> JoinReport:
    gap_ns = job.window_s * 1e9 / max(1, job.total)
    gate = asyncio.Semaphore(job.max_in_flight)
    timing = _Timing()

    async def one(client: _Client, due_ns: int) -> None:
        async with gate:
            begun = time.time_ns()
            timing.max_lag = max(timing.max_lag, begun - due_ns)
            timing.first_start = timing.first_start or begun
            timing.last_start = max(timing.last_start, begun)
            await _join_one(job, client)
            done = time.time_ns()
            timing.took.append(done - begun)
            timing.last_reply = max(timing.last_reply, done)

    tasks: list[asyncio.Task[None]] = []
    for k, client in enumerate(clients):
        due_ns = start_ns + int(job.global_index(k) * gap_ns)
        delay = (due_ns - time.time_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(client, due_ns)))
    limit = max(0.0, (start_ns - time.time_ns()) / 1e9) + job.window_s + job.connect_timeout
    _, pending = await asyncio.wait(tasks, timeout=limit) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    failures: Counter[str] = Counter()
    first_error = ""
    for task in tasks:
        if task in pending:
            failures["timeout"] += 1
            continue
        exc = task.exception()
        if exc is not None:
            failures[type(exc).__name__] += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"
    per_gateway = [0] * len(job.gateway_urls)
    for client in clients:
        if client.conn is not None:
            per_gateway[client.gateway] += 1
    return JoinReport(
        attempted=len(clients),
        per_gateway=per_gateway,
        failures=dict(failures),
        first_error=first_error[:300],
        took_ns=timing.took,
        first_start_ns=timing.first_start,
        last_start_ns=timing.last_start,
        last_reply_ns=timing.last_reply,
        max_lag_ns=timing.max_lag,
        users=sorted({c.user for c in clients if c.conn is not None}),
    )


def _members_in(reply: dict[str, Any]) -> int:
    body = reply.get(PRESENCE)
    members = body.get(PRESENCE) if isinstance(body, dict) else None
    return len(members) if isinstance(members, dict) else 0


async def _query(job: PresenceJob, clients: list[_Client], plan: QueryPlan) -> QueryReport:
    """``plan.count`` requests, request i on gateway i % gateways, ``plan.concurrency`` in flight."""
    by_gateway: dict[int, PresenceConn] = {}
    for client in clients:
        if client.conn is not None and not client.conn.disconnected:
            by_gateway.setdefault(client.gateway, client.conn)
    gateways = sorted(by_gateway)
    report = QueryReport(plan.kind, 0, {g: array("q") for g in gateways}, 0, 0, "", 0.0)
    if len(gateways) < len(job.gateway_urls):
        report.first_error = f"worker {job.slot}: a subscribed client on gateways {gateways} only"
    if not gateways:
        return report
    body = {plan.kind: {"channel": job.channel}}
    started = time.monotonic()
    deadline = started + plan.deadline_s
    counter = iter(range(plan.count))

    async def loop() -> None:
        for index in counter:
            if time.monotonic() > deadline:
                return
            gateway = gateways[index % len(gateways)]
            report.sent += 1
            try:
                reply, took = await by_gateway[gateway].timed(body, job.command_timeout)
            except (CommandError, TimeoutError) as exc:
                report.errors += 1
                report.first_error = report.first_error or f"{type(exc).__name__}: {exc}"[:300]
                continue
            report.took_ns[gateway].append(took)
            if plan.kind == PRESENCE:
                found = _members_in(reply)
            else:
                stats = reply.get(STATS)
                found = int(stats.get("num_clients", 0)) if isinstance(stats, dict) else 0
            if found != plan.expected_members:
                report.mismatches += 1
                if not report.first_error:
                    report.first_error = f"{plan.kind}: {found} members, expected {plan.expected_members}"

    await asyncio.gather(*(loop() for _ in range(max(1, plan.concurrency))))
    report.seconds = time.monotonic() - started
    return report


async def _close(conns: list[PresenceConn]) -> None:
    for conn in conns:
        with contextlib.suppress(Exception):  # best effort at shutdown
            conn.close()
    await asyncio.sleep(0.2)


async def _worker_async(job: PresenceJob, pipe: Connection) -> None:
    control = Control(pipe)
    started = time.monotonic()
    count = len(range(job.slot, job.total, job.workers))
    users = [job.global_index(k) % job.users for k in range(count)]
    clients = [_Client(user, make_token(job.secret, f"user{user}"), job.gateway_of(k)) for k, user in enumerate(users)]
    control.send("ready", ReadyInfo(0, 0, "", time.monotonic() - started))
    try:
        while True:
            kind, payload = await control.get(job.control_timeout)
            if kind == "join":
                control.send("joined", await _join_all(job, clients, int(payload)))
            elif kind == "query":
                control.send("queried", await _query(job, clients, payload))
            else:
                break
    finally:
        await _close([c.conn for c in clients if c.conn is not None])


def presence_worker_main(job: PresenceJob, pipe: Connection, counters: object) -> None:
    """Process entry point of a presence worker (``counters`` is unused)."""
    prepare_child()
    try:
        uvloop.run(_worker_async(job, pipe))
    except Exception as exc:  # reported to the parent
        pipe.send(("failed", f"{type(exc).__name__}: {exc}"))


# ---------------------------------------------------------------- observer


async def _converge(job: ObserverJob, conn: PresenceConn, pushes: PushCounter, plan: ConvergePlan) -> ObserverReport:
    report = ObserverReport(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, "", False)
    deadline = time.monotonic() + plan.timeout_s
    body = {STATS: {"channel": job.channel}}
    while time.monotonic() < deadline and not conn.disconnected:
        if not report.converged_ns:
            report.polls += 1
            try:
                reply = await conn.command(body, job.command_timeout)
            except (CommandError, TimeoutError) as exc:
                report.poll_errors += 1
                report.first_error = report.first_error or f"{type(exc).__name__}: {exc}"[:300]
                reply = {}
            stats = reply.get(STATS)
            if isinstance(stats, dict):
                report.last_clients = int(stats.get("num_clients", 0))
                report.last_users = int(stats.get("num_users", 0))
                if report.last_clients == plan.clients:
                    report.converged_ns = time.time_ns()
        if len(pushes.clients) >= plan.joins and not report.joins_done_ns:
            report.joins_done_ns = pushes.last_ns
        if report.converged_ns:
            if report.joins_done_ns:
                break
            if time.time_ns() - max(pushes.last_ns, report.converged_ns) > plan.join_idle_s * 1e9:
                break  # the missing joins stopped coming
        await asyncio.sleep(plan.poll_s)
    report.joins, report.distinct_joins, report.own_joins = pushes.joins, len(pushes.clients), pushes.own_joins
    report.leaves, report.other_pushes, report.last_push_ns = pushes.leaves, pushes.other, pushes.last_ns
    report.disconnected = conn.disconnected
    return report


async def _observer_async(job: ObserverJob, pipe: Connection) -> None:
    control = Control(pipe)
    started = time.monotonic()
    pushes = PushCounter(OBSERVER_USER)
    token = make_token(job.secret, OBSERVER_USER)
    conn = await open_centrifugo(
        job.gateway_url, token, None, job.command_timeout, factory=lambda: PresenceConn(pushes)
    )
    assert isinstance(conn, PresenceConn)
    try:
        await conn.command(_subscribe_body(job.channel, join_leave=True), job.command_timeout)
        control.send("ready", ReadyInfo(1, 0, "", time.monotonic() - started))
        while True:
            kind, payload = await control.get(job.control_timeout)
            if kind == "converge":
                control.send("converged", await _converge(job, conn, pushes, payload))
            else:
                break
    finally:
        await _close([conn])


def presence_observer_main(job: ObserverJob, pipe: Connection, counters: object) -> None:
    """Process entry point of the join/leave observer (``counters`` is unused)."""
    prepare_child()
    try:
        uvloop.run(_observer_async(job, pipe))
    except Exception as exc:  # reported to the parent
        pipe.send(("failed", f"{type(exc).__name__}: {exc}"))
