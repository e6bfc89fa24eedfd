"""Load-generator processes of the ``storm`` scenario (reconnect with recovery).

A storm worker opens its share of gateway connections, subscribes each to the
storm channel and keeps the ``epoch``/``offset`` of the subscribe reply. On
``disconnect`` it closes every socket; on ``storm`` (a wall-clock start time
in ns, the same for every worker) it reconnects all its clients at once and
resubscribes with ``recover``, then checks each reply: ``recovered: true`` and
exactly the missed publications (``{"storm_seq": i}`` for each i = 0..N-1 once,
with strictly increasing offsets above the recorded one).

The storm publisher publishes those N publications over its own gateway
connection with the ``publish`` command and waits for every acknowledgement
(on a history channel the gateway acknowledges once JetStream stored it).

Pipe messages: parent -> worker ``disconnect``, ``storm`` (start_ns),
``close``; worker -> parent ``ready`` (ReadyInfo), ``closed`` (int: sockets
that did not close in time), ``report`` (StormReport), ``failed`` (str).
The publisher sends ``report`` (StormPublishReport) and waits for ``close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from array import array
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import uvloop

from bench.clients import CentrifugoConn, CommandError, open_centrifugo
from bench.loadgen import Control, Endpoint, ReadyInfo, make_token, prepare_child

SEQ_KEY = "storm_seq"
# Failure categories of one reconnecting client, in report order.
RECOVERED_FALSE = "recovered false"
WRONG_COUNT = "wrong count"
BAD_ORDER = "wrong order/content"
ERROR = "error"
TIMEOUT = "timeout"
CATEGORIES = (RECOVERED_FALSE, WRONG_COUNT, BAD_ORDER, ERROR, TIMEOUT)


@dataclass(frozen=True)
class StormJob:
    endpoint: Endpoint
    slot: int
    channel: str
    clients: int
    publications: int
    concurrency: int
    storm_concurrency: int
    connect_timeout: float
    command_timeout: float
    storm_timeout: float
    control_timeout: float


@dataclass(frozen=True)
class StormPublishJob:
    endpoint: Endpoint
    channel: str
    publications: int
    ack_window: int
    command_timeout: float
    publish_timeout: float
    control_timeout: float


@dataclass
class StormReport:
    attempted: int
    # ns from the storm start to each successful, verified subscribe reply.
    done_ns: array[int]
    failures: dict[str, int]
    recovered_publications: int
    first_error: str


@dataclass
class StormPublishReport:
    acked: int
    errors: int
    first_error: str
    seconds: float


class Mismatch(Exception):
    """A recovering subscribe reply that is not the expected one; args[0] is the category."""


@dataclass
class _Client:
    token: str
    conn: CentrifugoConn | None = None
    epoch: str = ""
    offset: int = 0


@dataclass
class _Errors:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))
    first: str = ""

    def add(self, category: str, message: str) -> None:
        self.counts[category] += 1
        if not self.first:
            self.first = f"{category}: {message}"[:300]


def _subscribe_body(channel: str, client: _Client | None) -> dict[str, Any]:
    body: dict[str, Any] = {"channel": channel}
    if client is not None:
        body.update(recover=True, epoch=client.epoch, offset=client.offset)
    return {"subscribe": body}


def _reply_body(reply: dict[str, Any]) -> dict[str, Any]:
    body = reply.get("subscribe")
    return body if isinstance(body, dict) else {}


def check_recovery(body: dict[str, Any], after: int, expected: int) -> int:
    """Verify a recovering subscribe reply; return the number of publications or raise Mismatch."""
    if body.get("recovered") is not True:
        raise Mismatch(RECOVERED_FALSE, f"recovered={body.get('recovered')!r} epoch={body.get('epoch')!r}")
    pubs = body.get("publications") or []
    if not isinstance(pubs, list) or len(pubs) != expected:
        count = len(pubs) if isinstance(pubs, list) else pubs
        raise Mismatch(WRONG_COUNT, f"{count} publications, expected {expected}")
    last = after
    seqs: list[object] = []
    for index, pub in enumerate(pubs):
        offset = int(pub.get("offset", 0)) if isinstance(pub, dict) else 0
        data = pub.get("data") if isinstance(pub, dict) else None
        seqs.append(data.get(SEQ_KEY) if isinstance(data, dict) else None)
        if offset <= last:
            raise Mismatch(BAD_ORDER, f"offset {offset} after {last} (publication {index})")
        last = offset
    # Exactly the published ones: the stream's order (offsets) is the order of the acks,
    # which the gateway may give in another order than the pipelined sends.
    if sorted(seqs, key=lambda v: v if isinstance(v, int) else -1) != list(range(expected)):
        raise Mismatch(BAD_ORDER, f"not {SEQ_KEY} 0..{expected - 1} exactly once: {seqs[:5]}...")
    return len(pubs)


# ---------------------------------------------------------------- worker


async def _subscribe_first(job: StormJob, client: _Client) -> None:
    conn = await open_centrifugo(job.endpoint.ws_url, client.token, None, job.command_timeout)
    try:
        body = _reply_body(await conn.command(_subscribe_body(job.channel, None), job.command_timeout))
    except BaseException:
        conn.close()
        raise
    if body.get("recoverable") is not True or not body.get("epoch"):
        conn.close()
        raise CommandError(f"channel not recoverable: {body}")
    client.conn, client.epoch, client.offset = conn, str(body["epoch"]), int(body.get("offset", 0))


async def _open_all(job: StormJob, clients: list[_Client]) -> ReadyInfo:
    started = time.monotonic()
    gate = asyncio.Semaphore(job.concurrency)

    async def guarded(client: _Client) -> None:
        async with gate:
            await _subscribe_first(job, client)

    tasks = [asyncio.create_task(guarded(c)) for c in clients]
    _, pending = await asyncio.wait(tasks, timeout=job.connect_timeout) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    errors = _Errors()
    for task in tasks:
        if task in pending:
            errors.add(TIMEOUT, "connect phase timed out")
        elif (exc := task.exception()) is not None:
            errors.add(ERROR, f"{type(exc).__name__}: {exc}")
    failed = sum(errors.counts.values())
    return ReadyInfo(
        connected=len(clients) - failed,
        failed=failed,
        first_error=f"{failed} failed; first: {errors.first}" if failed else "",
        seconds=time.monotonic() - started,
        per_channel={job.channel: len(clients) - failed},
    )


async def _close_conns(clients: list[_Client], limit_s: float) -> int:
    """Close every socket; return how many are still open after ``limit_s``."""
    conns = [c.conn for c in clients if c.conn is not None]
    for conn in conns:
        with contextlib.suppress(Exception):  # best effort
            conn.close()
    for _ in range(max(1, int(limit_s / 0.02))):
        if all(c.disconnected for c in conns):
            break
        await asyncio.sleep(0.02)
    for client in clients:
        client.conn = None
    return sum(1 for c in conns if not c.disconnected)


async def _recover_one(job: StormJob, client: _Client, start_ns: int) -> tuple[int, int]:
    """Reconnect and resubscribe with recovery; return (ns since start, publications)."""
    conn = await open_centrifugo(job.endpoint.ws_url, client.token, None, job.command_timeout)
    client.conn = conn
    reply = await conn.command(_subscribe_body(job.channel, client), job.command_timeout)
    done = time.time_ns() - start_ns
    return done, check_recovery(_reply_body(reply), client.offset, job.publications)


async def _storm(job: StormJob, clients: list[_Client], start_ns: int) -> StormReport:
    errors = _Errors()
    done_ns: array[int] = array("q")
    recovered = 0
    gate = asyncio.Semaphore(job.storm_concurrency or len(clients) or 1)

    async def one(client: _Client) -> tuple[int, int]:
        async with gate:
            return await _recover_one(job, client, start_ns)

    await asyncio.sleep(max(0.0, (start_ns - time.time_ns()) / 1e9))
    tasks = [asyncio.create_task(one(c)) for c in clients]
    _, pending = await asyncio.wait(tasks, timeout=job.storm_timeout) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    for task in tasks:
        if task in pending:
            errors.add(TIMEOUT, f"no verified reply within {job.storm_timeout:g}s")
            continue
        exc = task.exception()
        if exc is None:
            took, count = task.result()
            done_ns.append(took)
            recovered += count
        elif isinstance(exc, Mismatch):
            errors.add(str(exc.args[0]), str(exc.args[1]))
        elif isinstance(exc, TimeoutError):
            errors.add(TIMEOUT, f"command timed out after {job.command_timeout:g}s")
        else:
            errors.add(ERROR, f"{type(exc).__name__}: {exc}")
    return StormReport(len(clients), done_ns, errors.counts, recovered, errors.first)


async def _worker_async(job: StormJob, pipe: Connection) -> None:
    control = Control(pipe)
    user = f"storm-{job.slot}-"
    clients = [_Client(make_token(job.endpoint.secret, f"{user}{i}")) for i in range(job.clients)]
    control.send("ready", await _open_all(job, clients))
    subscribed = [c for c in clients if c.epoch]
    try:
        while True:
            kind, payload = await control.get(job.control_timeout)
            if kind == "disconnect":
                control.send("closed", await _close_conns(subscribed, job.command_timeout))
            elif kind == "storm":
                control.send("report", await _storm(job, subscribed, int(payload)))
            else:
                break
    finally:
        await _close_conns(clients, 1.0)


def storm_worker_main(job: StormJob, pipe: Connection, counters: object) -> None:
    """Process entry point of a storm worker (``counters`` is unused)."""
    prepare_child()
    try:
        uvloop.run(_worker_async(job, pipe))
    except Exception as exc:  # reported to the parent
        pipe.send(("failed", f"{type(exc).__name__}: {exc}"))


# ---------------------------------------------------------------- publisher


async def _publish_all(job: StormPublishJob, conn: CentrifugoConn) -> StormPublishReport:
    started = time.monotonic()
    gate = asyncio.Semaphore(job.ack_window)
    errors = _Errors()

    async def one(seq: int) -> None:
        body = {"publish": {"channel": job.channel, "data": {SEQ_KEY: seq}}}
        async with gate:
            await conn.command(body, job.command_timeout)

    tasks = [asyncio.create_task(one(seq)) for seq in range(job.publications)]
    _, pending = await asyncio.wait(tasks, timeout=job.publish_timeout) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    acked = 0
    for task in tasks:
        if task in pending:
            errors.add(TIMEOUT, "publish not acknowledged in time")
        elif (exc := task.exception()) is not None:
            errors.add(ERROR, f"{type(exc).__name__}: {exc}")
        else:
            acked += 1
    return StormPublishReport(acked, sum(errors.counts.values()), errors.first, time.monotonic() - started)


async def _publisher_async(job: StormPublishJob, pipe: Connection) -> None:
    control = Control(pipe)
    token = make_token(job.endpoint.secret, "storm-publisher")
    conn = await open_centrifugo(job.endpoint.ws_url, token, None, job.command_timeout)
    try:
        control.send("report", await _publish_all(job, conn))
        await control.get(job.control_timeout)
    finally:
        conn.close()
        await asyncio.sleep(0.1)


def storm_publisher_main(job: StormPublishJob, pipe: Connection, counters: object) -> None:
    """Process entry point of the storm publisher (``counters`` is unused)."""
    prepare_child()
    try:
        uvloop.run(_publisher_async(job, pipe))
    except Exception as exc:  # reported to the parent
        pipe.send(("failed", f"{type(exc).__name__}: {exc}"))
