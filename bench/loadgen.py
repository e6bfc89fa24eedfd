"""Load-generator processes (started with multiprocessing 'spawn').

A subscriber worker opens its share of connections, connects and subscribes,
reports ``ready``, then records a receive timestamp for every publication. A
publisher process publishes ``{"bench_ts": time.time_ns()}`` payloads either
at a fixed rate or as fast as the subscribers keep up (closed loop on the
shared delivery counters, with a bounded number of publications in flight).

The parent talks to each process over a Pipe with ``(kind, payload)`` tuples:
parent -> child ``start`` (record_from_ns: a new measured window; a subscriber
may get several, each followed by ``stop``), ``stop``, ``close``;
child -> parent ``ready`` (ReadyInfo), ``report`` (SubscriberReport or
PublisherReport), ``failed`` (str).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import time
from array import array
from collections import Counter
from collections.abc import MutableSequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Protocol, TypeAlias

import jwt
import nats
import uvloop
from nats.aio.client import Client as NatsClient

from bench.clients import (
    CentrifugoConn,
    DeliverySink,
    NatsWsConn,
    bench_payload,
    channel_subject,
    open_centrifugo,
    open_nats_ws,
)
from bench.stack import raise_nofile_limit, set_parent_death_signal

GATEWAY = "gateway"
BASELINE = "baseline"
CLOSED_LOOP = "closed_loop"
FIXED_RATE = "rate"


@dataclass(frozen=True)
class Endpoint:
    """Where the load goes: the gateway (Centrifugo) or nats-server (baseline)."""

    target: str
    ws_url: str
    nats_url: str
    secret: str


@dataclass(frozen=True)
class SubscriberJob:
    endpoint: Endpoint
    slot: int
    channels: list[str]
    concurrency: int
    connect_timeout: float
    command_timeout: float
    control_timeout: float
    max_samples: int


@dataclass(frozen=True)
class PublisherJob:
    endpoint: Endpoint
    channels: list[str]
    mode: str
    rate: float
    window: int
    ack_window: int
    subscribers: int
    warmup: float
    duration: float
    command_timeout: float
    control_timeout: float


@dataclass
class ReadyInfo:
    connected: int
    failed: int
    first_error: str
    seconds: float
    per_channel: dict[str, int] = field(default_factory=dict)


@dataclass
class SubscriberReport:
    delivered: int
    measured: int
    latencies: array[int]
    first_recv_ns: int
    last_recv_ns: int
    disconnects: int
    pings: int
    errors: int
    first_error: str


@dataclass
class PublisherReport:
    published: int
    measured: int
    per_channel: dict[str, int]
    first_send_ns: int
    last_send_ns: int
    errors: int
    first_error: str
    max_pending: int


def make_token(secret: str, user: str) -> str:
    """HS256 JWT with ``sub`` and ``exp`` claims, as the gateway expects."""
    claims = {"sub": user, "exp": int(time.time()) + 3600}
    return jwt.encode(claims, secret, algorithm="HS256")


class Control:
    """Asyncio side of the parent pipe.

    A daemon thread does the blocking ``recv`` (registering the pipe with the
    event loop would make it non-blocking and break large ``send`` calls).
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        threading.Thread(target=self._reader, name="control", daemon=True).start()

    def _reader(self) -> None:
        while True:
            try:
                message: tuple[str, Any] = self.conn.recv()
            except (EOFError, OSError):
                message = ("close", None)
            try:
                self._loop.call_soon_threadsafe(self.queue.put_nowait, message)
            except RuntimeError:  # loop already closed
                return
            if message[0] == "close":
                return

    async def get(self, limit_s: float) -> tuple[str, Any]:
        try:
            return await asyncio.wait_for(self.queue.get(), limit_s)
        except TimeoutError:
            return ("close", None)

    def send(self, kind: str, payload: object) -> None:
        self.conn.send((kind, payload))


def prepare_child() -> None:
    set_parent_death_signal()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_nofile_limit()


# ---------------------------------------------------------------- subscribers

Subscription: TypeAlias = CentrifugoConn | NatsWsConn


async def _open_one(job: SubscriberJob, index: int, sink: DeliverySink) -> Subscription:
    endpoint = job.endpoint
    channel = job.channels[index]
    if endpoint.target == GATEWAY:
        token = make_token(endpoint.secret, f"bench-{job.slot}-{index}")
        conn = await open_centrifugo(endpoint.ws_url, token, sink, job.command_timeout)
        try:
            await conn.command({"subscribe": {"channel": channel}}, job.command_timeout)
        except BaseException:
            conn.close()
            raise
        return conn
    nconn = await open_nats_ws(endpoint.ws_url, sink, job.command_timeout)
    try:
        await nconn.subscribe(channel_subject(channel), job.command_timeout)
    except BaseException:
        nconn.close()
        raise
    return nconn


async def _open_all(job: SubscriberJob, sink: DeliverySink) -> tuple[list[Subscription], ReadyInfo]:
    started = time.monotonic()
    gate = asyncio.Semaphore(job.concurrency)

    async def guarded(index: int) -> Subscription:
        async with gate:
            return await _open_one(job, index, sink)

    tasks = [asyncio.create_task(guarded(i)) for i in range(len(job.channels))]
    _, pending = await asyncio.wait(tasks, timeout=job.connect_timeout) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    conns: list[Subscription] = []
    per_channel: Counter[str] = Counter()
    failures: Counter[str] = Counter({"timed out": len(pending)} if pending else {})
    first_error = ""
    for index, task in enumerate(tasks):
        if task in pending:
            continue
        exc = task.exception()
        if exc is None:
            conns.append(task.result())
            per_channel[job.channels[index]] += 1
            continue
        failures[type(exc).__name__] += 1
        first_error = first_error or f"{type(exc).__name__}: {exc}"
    if failures:
        summary = ", ".join(f"{name} x{count}" for name, count in failures.most_common())
        first_error = f"{sum(failures.values())} failed ({summary}); first: {first_error or 'connect phase timed out'}"
    info = ReadyInfo(
        connected=len(conns),
        failed=len(tasks) - len(conns),
        first_error=first_error[:300],
        seconds=time.monotonic() - started,
        per_channel=dict(per_channel),
    )
    return conns, info


async def _close_all(conns: list[Subscription]) -> None:
    for conn in conns:
        with contextlib.suppress(Exception):  # best effort at shutdown
            conn.close()
    await asyncio.sleep(0.2)


def _subscriber_report(sink: DeliverySink) -> SubscriberReport:
    return SubscriberReport(
        delivered=sink.delivered,
        measured=sink.measured,
        latencies=sink.latencies,
        first_recv_ns=sink.first_recv_ns,
        last_recv_ns=sink.last_recv_ns,
        disconnects=sink.disconnects,
        pings=sink.pings,
        errors=sink.errors,
        first_error=sink.first_error,
    )


async def _subscriber_async(job: SubscriberJob, pipe: Connection, counters: MutableSequence[int]) -> None:
    control = Control(pipe)
    sink = DeliverySink(counters=counters, slot=job.slot, max_samples=job.max_samples)
    conns, info = await _open_all(job, sink)
    control.send("ready", info)
    while True:
        kind, payload = await control.get(job.control_timeout)
        if kind == "start":
            sink.restart(int(payload))
        elif kind == "stop":
            control.send("report", _subscriber_report(sink))
        else:
            break
    await _close_all(conns)


def subscriber_main(job: SubscriberJob, pipe: Connection, counters: MutableSequence[int]) -> None:
    """Process entry point of a subscriber worker."""
    prepare_child()
    try:
        uvloop.run(_subscriber_async(job, pipe, counters))
    except Exception as exc:  # reported to the parent
        pipe.send(("failed", f"{type(exc).__name__}: {exc}"))


# ---------------------------------------------------------------- publisher


class Publisher(Protocol):
    async def publish(self, channel: str, ts_ns: int) -> None: ...

    def pending(self) -> int: ...

    async def flush(self) -> None: ...

    def errors(self) -> tuple[int, str]: ...

    async def close(self) -> None: ...


class CentrifugoPublisher:
    """Publishes with the Centrifugo ``publish`` command over one connection."""

    def __init__(self, conn: CentrifugoConn, channels: list[str]) -> None:
        self.conn = conn
        self.channel_json = {c: json.dumps(c).encode() for c in channels}

    async def publish(self, channel: str, ts_ns: int) -> None:
        self.conn.send_publish(self.channel_json[channel], ts_ns)

    def pending(self) -> int:
        return self.conn.pending_publishes

    async def flush(self) -> None:
        return None

    def errors(self) -> tuple[int, str]:
        return self.conn.publish_errors, self.conn.first_error

    async def close(self) -> None:
        self.conn.close()


class NatsPublisher:
    """Publishes with nats-py over core NATS (baseline)."""

    def __init__(self, client: NatsClient) -> None:
        self.client = client
        self.subjects: dict[str, str] = {}
        self.error_count = 0
        self.first_error = ""

    async def publish(self, channel: str, ts_ns: int) -> None:
        subject = self.subjects.get(channel)
        if subject is None:
            subject = self.subjects[channel] = channel_subject(channel)
        await self.client.publish(subject, bench_payload(ts_ns))

    def pending(self) -> int:
        return 0

    async def flush(self) -> None:
        try:
            await self.client.flush(timeout=10)
        except Exception as exc:  # counted, not fatal
            self.error_count += 1
            self.first_error = self.first_error or f"flush: {exc}"

    def errors(self) -> tuple[int, str]:
        return self.error_count, self.first_error

    async def close(self) -> None:
        await self.client.drain()


async def _make_publisher(job: PublisherJob) -> Publisher:
    endpoint = job.endpoint
    if endpoint.target == GATEWAY:
        token = make_token(endpoint.secret, "bench-publisher")
        conn = await open_centrifugo(endpoint.ws_url, token, None, job.command_timeout)
        return CentrifugoPublisher(conn, job.channels)
    client = await nats.connect(endpoint.nats_url, connect_timeout=int(job.command_timeout))
    return NatsPublisher(client)


@dataclass
class _PubState:
    published: int = 0
    measured: int = 0
    first_send_ns: int = 0
    last_send_ns: int = 0
    max_pending: int = 0
    per_channel: Counter[str] = field(default_factory=Counter)


def _allowed(job: PublisherJob, state: _PubState, pub: Publisher, counters: MutableSequence[int], t0: float) -> int:
    """How many publications may be sent right now."""
    ack_room = job.ack_window - pub.pending()
    if job.mode == CLOSED_LOOP:
        fully_delivered = sum(counters) // max(1, job.subscribers)
        room = job.window - (state.published - fully_delivered)
    else:
        room = int((time.monotonic() - t0) * job.rate) - state.published
    return max(0, min(room, ack_room))


async def _send_batch(job: PublisherJob, state: _PubState, pub: Publisher, count: int, record_from: int) -> None:
    channels = job.channels
    for _ in range(count):
        channel = channels[state.published % len(channels)]
        ts_ns = time.time_ns()
        await pub.publish(channel, ts_ns)
        state.published += 1
        if ts_ns >= record_from:
            state.measured += 1
            state.per_channel[channel] += 1
        if state.first_send_ns == 0:
            state.first_send_ns = ts_ns
        state.last_send_ns = ts_ns


async def _publish_loop(
    job: PublisherJob, pub: Publisher, counters: MutableSequence[int], record_from: int
) -> PublisherReport:
    state = _PubState()
    t0 = time.monotonic()
    end = t0 + job.warmup + job.duration
    while time.monotonic() < end:
        count = _allowed(job, state, pub, counters, t0)
        if count:
            await _send_batch(job, state, pub, count, record_from)
            state.max_pending = max(state.max_pending, pub.pending())
            await pub.flush()
        await asyncio.sleep(0.0005 if count else 0.001)
    await pub.flush()
    errors, first_error = pub.errors()
    return PublisherReport(
        published=state.published,
        measured=state.measured,
        per_channel=dict(state.per_channel),
        first_send_ns=state.first_send_ns,
        last_send_ns=state.last_send_ns,
        errors=errors,
        first_error=first_error,
        max_pending=state.max_pending,
    )


async def _publisher_async(job: PublisherJob, pipe: Connection, counters: MutableSequence[int]) -> None:
    control = Control(pipe)
    started = time.monotonic()
    pub = await _make_publisher(job)
    control.send("ready", ReadyInfo(1, 0, "", time.monotonic() - started))
    try:
        while True:
            kind, payload = await control.get(job.control_timeout)
            if kind == "start":
                report = await _publish_loop(job, pub, counters, int(payload))
                control.send("report", report)
            else:
                break
    finally:
        await asyncio.wait_for(pub.close(), 5)


def publisher_main(job: PublisherJob, pipe: Connection, counters: MutableSequence[int]) -> None:
    """Process entry point of the publisher."""
    prepare_child()
    try:
        uvloop.run(_publisher_async(job, pipe, counters))
    except Exception as exc:  # reported to the parent
        pipe.send(("failed", f"{type(exc).__name__}: {exc}"))
