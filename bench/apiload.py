"""Load-generator process of the ``api`` scenario: publishes through the server API over HTTP.

An API publisher holds keep-alive connections to one API process (`bench.http11`)
and runs one phase at a time, each from a wall-clock ``start_ns`` (warmup) to
``end_ns``, measuring the requests sent in ``[record_from_ns, end_ns)``:

* ``closed``: every connection sends a ``publish`` request as soon as the
  previous one was answered (closed loop, the concurrency is the connections);
* ``rate``: requests are due at a fixed rate (open loop) and go out on the
  first free connection of a pool; the lag from the due time to the send is
  recorded, so a pool too small or a client too slow shows as a rate not held;
* ``batch``: as ``closed``, with ``batch`` requests of N ``publish`` commands.

Every publication carries ``{"bench_ts": time.time_ns()}`` (the send time), so
the subscriber workers count and time its deliveries as for the gateway's own
publisher. A request counts as done when the answer is 200 and says so: a
``result`` for ``publish``, N ``publish`` replies and no ``error`` for a batch.
Latency is from the request's first byte written to its last byte read.

Pipe messages: parent -> child ``phase`` (ApiPhase), ``close``; child ->
parent ``ready`` (ReadyInfo), ``report`` (ApiPhaseReport), ``failed`` (str).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import uvloop

from bench.http11 import HttpConn, HttpError, connect, request_head
from bench.loadgen import Control, ReadyInfo, prepare_child

CLOSED = "closed"
RATE = "rate"
BATCH = "batch"
PHASES = (CLOSED, RATE, BATCH)


@dataclass(frozen=True)
class ApiJob:
    slot: int
    host: str
    port: int
    api_key: str
    channel: str
    # Connections opened up front: the most any phase of this process uses.
    connections: int
    connect_timeout: float
    command_timeout: float
    control_timeout: float


@dataclass(frozen=True)
class ApiPhase:
    kind: str
    start_ns: int
    record_from_ns: int
    end_ns: int
    # Connections used (closed, batch: requests in flight; rate: the pool).
    connections: int
    # Requests/s of this process (rate only).
    rate: float = 0.0
    # Publish commands per request (batch only).
    batch_size: int = 1


@dataclass
class ApiPhaseReport:
    kind: str
    sent: int = 0
    ok: int = 0
    # Publications acknowledged (ok requests times the commands each), warmup included.
    publications: int = 0
    window_sent: int = 0
    window_ok: int = 0
    window_publications: int = 0
    # Publications acknowledged with a ``bench_ts`` from the window start on: the ones the
    # subscribers count (at a fixed rate a request due before the window may be sent in it).
    measured_publications: int = 0
    # rate: requests due in the window.
    scheduled: int = 0
    # Cut off in flight at the end of the phase (their publications are not counted).
    unanswered: int = 0
    errors: int = 0
    first_error: str = ""
    first_send_ns: int = 0
    last_done_ns: int = 0
    # ns, first byte written to last byte read, of the window's answered requests.
    latencies: array[int] = field(default_factory=lambda: array("q"))
    # rate: ns from the due time to the send, of the window's requests.
    lags: array[int] = field(default_factory=lambda: array("q"))

    def error(self, message: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = message[:300]


def _publish_body(channel: str) -> Callable[[int], bytes]:
    template = b'{"channel":"%s","data":{"bench_ts":%%d}}' % channel.encode()
    return lambda ts: template % ts


def _batch_body(channel: str, size: int) -> Callable[[int], bytes]:
    command = b'{"publish":{"channel":"%s","data":{"bench_ts":%%d}}}' % channel.encode()
    template = b'{"commands":[' + b",".join([command] * size) + b"]}"
    return lambda ts: template % ((ts,) * size)


def _publish_ok(body: bytes) -> bool:
    return body.startswith(b'{"result"')


def _batch_ok(size: int) -> Callable[[bytes], bool]:
    return lambda body: body.count(b'{"publish"') == size and b'"error"' not in body


class _Runner:
    """One phase over the process's connections."""

    def __init__(self, job: ApiJob, conns: list[HttpConn], phase: ApiPhase) -> None:
        self.job, self.conns, self.phase = job, conns, phase
        self.report = ApiPhaseReport(phase.kind)
        headers = {"X-API-Key": job.api_key, "Content-Type": "application/json"}
        if phase.kind == BATCH:
            self.head = request_head(job.host, job.port, "/api/batch", headers)
            self.body, self.ok = _batch_body(job.channel, phase.batch_size), _batch_ok(phase.batch_size)
        else:
            self.head = request_head(job.host, job.port, "/api/publish", headers)
            self.body, self.ok = _publish_body(job.channel), _publish_ok
        self.in_flight: set[int] = set()

    async def one(self, index: int, due_ns: int = 0) -> None:
        """Send one request on connection ``index`` and account its answer."""
        phase, report = self.phase, self.report
        conn = self.conns[index]
        if not conn.usable:
            try:
                conn = self.conns[index] = await connect(self.job.host, self.job.port, self.job.command_timeout)
            except (OSError, TimeoutError) as exc:
                report.error(f"reconnect: {type(exc).__name__}: {exc}")
                await asyncio.sleep(0.1)
                return
        ts = time.time_ns()
        counted = due_ns or ts
        in_window = phase.record_from_ns <= counted < phase.end_ns
        report.sent += 1
        if in_window:
            report.window_sent += 1
            report.first_send_ns = report.first_send_ns or ts
            if due_ns:
                report.lags.append(ts - due_ns)
        self.in_flight.add(index)
        started = time.perf_counter_ns()
        try:
            status, body = await conn.post(self.head, self.body(ts))
        except HttpError as exc:
            report.error(str(exc))
            return
        finally:
            self.in_flight.discard(index)
        took = time.perf_counter_ns() - started
        if status != 200 or not self.ok(body):
            report.error(f"HTTP {status}: {body[:200]!r}")
            return
        report.ok += 1
        report.publications += phase.batch_size
        if ts >= phase.record_from_ns:
            report.measured_publications += phase.batch_size
        if in_window:
            report.window_ok += 1
            report.window_publications += phase.batch_size
            report.latencies.append(took)
            report.last_done_ns = time.time_ns()

    async def closed_loop(self, index: int) -> None:
        while time.time_ns() < self.phase.end_ns:
            await self.one(index)

    async def rate_worker(self, index: int, queue: asyncio.Queue[int]) -> None:
        while True:
            due_ns = await queue.get()
            if due_ns < 0:
                return
            await self.one(index, due_ns)

    async def dispatch(self, queue: asyncio.Queue[int]) -> None:
        """Put each request on the queue at its due time (open loop)."""
        phase = self.phase
        interval = 1e9 / phase.rate
        sent = 0
        while True:
            due_ns = phase.start_ns + int(sent * interval)
            if due_ns >= phase.end_ns:
                break
            now = time.time_ns()
            if due_ns > now:
                await asyncio.sleep((due_ns - now) / 1e9)
                continue
            if due_ns >= phase.record_from_ns:
                self.report.scheduled += 1
            queue.put_nowait(due_ns)
            sent += 1
        for _ in range(phase.connections):
            queue.put_nowait(-1)

    async def run(self) -> ApiPhaseReport:
        phase = self.phase
        count = min(phase.connections, len(self.conns))
        await asyncio.sleep(max(0.0, (phase.start_ns - time.time_ns()) / 1e9))
        if phase.kind == RATE:
            queue: asyncio.Queue[int] = asyncio.Queue()
            tasks = [asyncio.create_task(self.rate_worker(i, queue)) for i in range(count)]
            tasks.append(asyncio.create_task(self.dispatch(queue)))
        else:
            tasks = [asyncio.create_task(self.closed_loop(i)) for i in range(count)]
        limit = (phase.end_ns - time.time_ns()) / 1e9 + self.job.command_timeout
        done, pending = await asyncio.wait(tasks, timeout=max(0.0, limit))
        stuck = set(self.in_flight)
        self.report.unanswered = len(stuck)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for index in stuck:
            self.conns[index].close()  # its answer would land in the next phase
        for task in done:
            exc = task.exception()
            if exc is not None:
                self.report.error(f"{type(exc).__name__}: {exc}")
        return self.report


async def _open(job: ApiJob) -> tuple[list[HttpConn], ReadyInfo]:
    started = time.monotonic()
    results = await asyncio.gather(
        *(connect(job.host, job.port, job.connect_timeout) for _ in range(job.connections)), return_exceptions=True
    )
    conns = [r for r in results if isinstance(r, HttpConn)]
    failed = [r for r in results if not isinstance(r, HttpConn)]
    first = f"{type(failed[0]).__name__}: {failed[0]}" if failed else ""
    return conns, ReadyInfo(len(conns), len(failed), first, time.monotonic() - started)


async def _api_async(job: ApiJob, pipe: Connection) -> None:
    control = Control(pipe)
    conns, info = await _open(job)
    control.send("ready", info)
    try:
        while True:
            kind, payload = await control.get(job.control_timeout)
            if kind != "phase" or not conns:
                break
            control.send("report", await _Runner(job, conns, payload).run())
    finally:
        for conn in conns:
            with contextlib.suppress(Exception):  # best effort at shutdown
                conn.close()


def api_publisher_main(job: ApiJob, pipe: Connection, counters: object) -> None:
    """Process entry point of an API publisher."""
    prepare_child()
    try:
        uvloop.run(_api_async(job, pipe))
    except Exception as exc:  # reported to the parent
        pipe.send(("failed", f"{type(exc).__name__}: {exc}"))
