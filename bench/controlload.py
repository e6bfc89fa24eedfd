"""Load-generator processes of the ``control`` scenario: client sockets, and the auth service's gRPC caller.

A socket worker holds its share of gateway clients: global client ``g`` of
``total`` is user ``ctl-user{g % users}`` on gateway ``(g // workers) %
gateways``, subscribed to one channel. On ``connect`` it opens all of them
(bounded), on ``collect`` (a wall-clock deadline in ns) it waits until every
socket ended or the deadline passed and reports, per client, the wall-clock
time its close frame arrived and the frame's code; then it closes what is
left, ready for the next ``connect``.

The caller is one process with one gRPC channel to the auth service (every
call carries ``authorization: apikey <key>`` and a deadline far beyond the
service's NATS timeout, so an UNAVAILABLE is the service's own answer). Its
orders: ``calls`` (one call per user, all at once), ``paced`` (one call every
interval for a duration, each awaited on its own), ``probe`` (paced calls until
one succeeds; ``probing`` tells the parent the first one is out). Each call is
a ``CallResult``: wall-clock start and answer, status code.

Pipe messages: parent -> worker ``connect``, ``collect`` (deadline_ns),
``close``; worker -> parent ``ready`` (ConnectReport), ``closes``
(CloseReport). Parent -> caller ``calls`` (CallsOrder), ``paced``
(PacedOrder), ``probe`` (PacedOrder, the duration is the limit), ``close``;
caller -> parent ``ready``, ``probing``, ``results`` (list[CallResult]).
Either may send ``failed`` (str).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, cast

import grpc
import uvloop
from picows import WSFrame, WSMsgType, WSTransport

from bench.clients import CentrifugoConn, open_centrifugo
from bench.controlmodel import OK, REVOKE, USER_PREFIX, CallResult
from bench.loadgen import Control, make_token, prepare_child
from meshcast.proto.auth_pb2 import DisconnectUserRequest, KeysRequest, RevokeUserRequest
from meshcast.proto.auth_pb2_grpc import AuthServiceStub


@dataclass(frozen=True)
class SocketJob:
    gateway_urls: list[str]
    secret: str
    slot: int
    workers: int
    total: int
    users: int
    channel: str
    concurrency: int
    connect_timeout: float
    command_timeout: float
    control_timeout: float

    def clients(self) -> list[tuple[int, int]]:
        """(user index, gateway index) of each of this worker's clients."""
        gateways = len(self.gateway_urls)
        return [(g % self.users, (g // self.workers) % gateways) for g in range(self.slot, self.total, self.workers)]


@dataclass
class ConnectReport:
    connected: int
    failed: int
    seconds: float
    per_gateway: list[int]
    first_error: str = ""


@dataclass(frozen=True)
class ClientClose:
    """How one client's socket ended: close frame time (0: none) and code, or dropped without one."""

    user: int
    gateway: int
    close_ns: int
    code: int
    dropped: bool


@dataclass
class CloseReport:
    clients: list[ClientClose] = field(default_factory=list)


@dataclass(frozen=True)
class CallerJob:
    target: str
    api_key: str
    deadline_s: float
    control_timeout: float


@dataclass(frozen=True)
class CallsOrder:
    method: str
    users: tuple[str, ...]


@dataclass(frozen=True)
class PacedOrder:
    method: str
    user: str
    interval_s: float
    duration_s: float


# ---------------------------------------------------------------- socket worker


class WatchedConn(CentrifugoConn):
    """A gateway client that notes when its close frame arrived, and with which code; sets ``ended`` on either end."""

    def __init__(self, ended: asyncio.Event) -> None:
        super().__init__(None)
        self.ended = ended
        self.close_ns = 0
        self.close_code = 0

    @property
    def over(self) -> bool:
        return self.disconnected or self.close_ns > 0

    def handle_control_frame(self, transport: WSTransport, frame: WSFrame) -> bool:
        if frame.msg_type == WSMsgType.CLOSE and not self.close_ns:
            self.close_ns = time.time_ns()
            self.close_code = int(frame.get_close_code().value)
            self.ended.set()
        return super().handle_control_frame(transport, frame)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        super().on_ws_disconnected(transport)
        self.ended.set()


@dataclass
class _Client:
    user: int
    gateway: int
    token: str
    conn: WatchedConn | None = None


async def _open(job: SocketJob, client: _Client, ended: asyncio.Event) -> None:
    url = job.gateway_urls[client.gateway]
    opened = await open_centrifugo(url, client.token, None, job.command_timeout, lambda: WatchedConn(ended))
    conn = cast("WatchedConn", opened)
    try:
        await conn.command({"subscribe": {"channel": job.channel}}, job.command_timeout)
    except BaseException:
        conn.close()
        raise
    client.conn = conn


async def _connect_all(job: SocketJob, clients: list[_Client], ended: asyncio.Event) -> ConnectReport:
    started = time.monotonic()
    gate = asyncio.Semaphore(job.concurrency)

    async def guarded(client: _Client) -> None:
        async with gate:
            await _open(job, client, ended)

    tasks = [asyncio.create_task(guarded(c)) for c in clients]
    _, pending = await asyncio.wait(tasks, timeout=job.connect_timeout) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    failures: Counter[str] = Counter({"timed out": len(pending)} if pending else {})
    first = ""
    for task in tasks:
        if task not in pending and (exc := task.exception()) is not None:
            failures[type(exc).__name__] += 1
            first = first or f"{type(exc).__name__}: {exc}"
    per_gateway = [0] * len(job.gateway_urls)
    for client in clients:
        if client.conn is not None:  # set once connected and subscribed
            per_gateway[client.gateway] += 1
    failed = sum(failures.values())
    summary = ", ".join(f"{name} x{count}" for name, count in failures.most_common())
    return ConnectReport(
        connected=sum(per_gateway),
        failed=failed,
        seconds=time.monotonic() - started,
        per_gateway=per_gateway,
        first_error=f"{failed} failed ({summary}); first: {first or 'connect phase timed out'}"[:300] if failed else "",
    )


async def _collect(clients: list[_Client], ended: asyncio.Event, deadline_ns: int) -> CloseReport:
    """Wait until every open client's socket ended (or the deadline); report each one, then close the rest."""
    conns = [c.conn for c in clients if c.conn is not None]
    while not all(conn.over for conn in conns):
        remaining = (deadline_ns - time.time_ns()) / 1e9
        if remaining <= 0:
            break
        ended.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ended.wait(), remaining)
    report = CloseReport()
    for client in clients:
        if (conn := client.conn) is not None:
            dropped = conn.disconnected and not conn.close_ns
            report.clients.append(ClientClose(client.user, client.gateway, conn.close_ns, conn.close_code, dropped))
    await _close_all(clients)
    return report


async def _close_all(clients: list[_Client]) -> None:
    for client in clients:
        if client.conn is not None:
            with contextlib.suppress(Exception):  # best effort
                client.conn.close()
            client.conn = None
    await asyncio.sleep(0.05)


async def _socket_worker_async(job: SocketJob, pipe: Connection) -> None:
    control = Control(pipe)
    tokens = {user: make_token(job.secret, f"{USER_PREFIX}{user}") for user in range(job.users)}
    clients = [_Client(user, gateway, tokens[user]) for user, gateway in job.clients()]
    ended = asyncio.Event()  # set whenever a socket ends
    try:
        while True:
            kind, payload = await control.get(job.control_timeout)
            if kind == "connect":
                control.send("ready", await _connect_all(job, clients, ended))
            elif kind == "collect":
                control.send("closes", await _collect(clients, ended, int(payload)))
            else:
                break
    finally:
        await _close_all(clients)


def socket_worker_main(job: SocketJob, pipe: Connection, counters: object) -> None:
    """Process entry point of a socket worker (``counters`` is unused)."""
    prepare_child()
    try:
        uvloop.run(_socket_worker_async(job, pipe))
    except Exception as exc:  # reported to the parent
        pipe.send(("failed", f"{type(exc).__name__}: {exc}"))


# ---------------------------------------------------------------- gRPC caller


class _Caller:
    def __init__(self, stub: Any, job: CallerJob) -> None:
        self._stub = stub
        # Every call: the API key, and a deadline far beyond the service's NATS timeout.
        self._options: dict[str, Any] = {
            "metadata": (("authorization", f"apikey {job.api_key}"),),
            "timeout": job.deadline_s,
        }

    async def warm_up(self) -> None:
        """One call that needs no NATS: the channel is connected before anything is timed."""
        await self._stub.Keys(KeysRequest(), **self._options)

    async def call(self, method: str, user: str) -> CallResult:
        code, detail = OK, ""
        start = time.time_ns()
        try:
            if method == REVOKE:
                await self._stub.RevokeUser(RevokeUserRequest(user=user), **self._options)
            else:
                await self._stub.DisconnectUser(DisconnectUserRequest(user=user), **self._options)
        except grpc.aio.AioRpcError as exc:
            code, detail = exc.code().name, str(exc.details() or "")[:200]
        return CallResult(method, user, start, time.time_ns(), code, detail)

    async def calls(self, order: CallsOrder) -> list[CallResult]:
        return list(await asyncio.gather(*(self.call(order.method, user) for user in order.users)))

    async def paced(self, order: PacedOrder) -> list[CallResult]:
        """A call every ``interval_s`` for ``duration_s``; every one awaited (each bounded by its deadline)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        for index in range(max(1, round(order.duration_s / order.interval_s))):
            await asyncio.sleep(max(0.0, start + index * order.interval_s - loop.time()))
            tasks.append(asyncio.create_task(self.call(order.method, order.user)))
        return list(await asyncio.gather(*tasks))

    async def probe(self, order: PacedOrder, first_out: Callable[[], None]) -> list[CallResult]:
        """A call every ``interval_s`` until one succeeds (at most ``duration_s``); the answered ones, in order."""
        loop = asyncio.get_running_loop()
        start, answered, succeeded = loop.time(), list[CallResult](), asyncio.Event()

        async def one() -> None:
            result = await self.call(order.method, order.user)
            answered.append(result)
            if result.code == OK:
                succeeded.set()

        tasks = [asyncio.create_task(one())]
        await asyncio.sleep(0)  # the first call is under way
        first_out()
        while not succeeded.is_set() and loop.time() - start < order.duration_s:
            due = start + len(tasks) * order.interval_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(succeeded.wait(), max(0.0, due - loop.time()))
            if not succeeded.is_set():
                tasks.append(asyncio.create_task(one()))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return sorted(answered, key=lambda r: r.start_ns)


async def _caller_async(job: CallerJob, pipe: Connection) -> None:
    control = Control(pipe)
    async with grpc.aio.insecure_channel(job.target) as channel:
        caller = _Caller(AuthServiceStub(channel), job)
        await caller.warm_up()
        control.send("ready", None)
        while True:
            kind, order = await control.get(job.control_timeout)
            if kind == "calls":
                control.send("results", await caller.calls(order))
            elif kind == "paced":
                control.send("results", await caller.paced(order))
            elif kind == "probe":
                control.send("results", await caller.probe(order, lambda: control.send("probing", None)))
            else:
                break


def caller_main(job: CallerJob, pipe: Connection, counters: object) -> None:
    """Process entry point of the gRPC caller (``counters`` is unused); plain asyncio, as grpc.aio wants."""
    prepare_child()
    try:
        asyncio.run(_caller_async(job, pipe))
    except Exception as exc:  # reported to the parent
        pipe.send(("failed", f"{type(exc).__name__}: {exc}"))
