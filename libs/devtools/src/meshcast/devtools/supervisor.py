"""`make run`'s process supervisor: what Kubernetes does for a pod, on one machine.

Programs start in order, each once the one before it is ready. After that a
program that exits, for whatever reason, is restarted with the same command
line, environment and ports after an exponential backoff
(``meshcast.devtools.backoff``), and the console and the stack log say so:
``gateway-1 exited with code -9 (SIGKILL); restarting in 0.5 s`` and, once
its readiness check passes again, ``gateway-1 is back``. Only `stop` ends it:
keepers first (nothing restarts any more), then the programs by stop group,
highest first (gateways before the services, the services before NATS), each
group SIGTERMed together and SIGKILLed if it lingers.

Every child runs in its own session, so what a terminal sends its foreground
process group (Ctrl-C's SIGINT, the SIGHUP of a closed terminal) reaches only
the supervisor, which stops them in order; and it gets SIGTERM from the kernel
should the supervisor itself die (SIGKILL included), so nothing is left behind.
The console may be gone by then (a closed terminal): what the supervisor says
still goes to the stack log, and a failed write to the console stops nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Final, TextIO

from .backoff import Backoff, BackoffPolicy
from .errors import StartFailed

ReadyCheck = Callable[[], Awaitable[bool]]

_PR_SET_PDEATHSIG: Final = 1
# How often a starting program's readiness is checked.
_READY_POLL: Final = 0.1
# A restarted program still not ready after this long is mentioned once.
_SLOW_READY: Final = 30.0
# The most of a failed program's log `StartFailed` quotes, in characters (whole lines).
_TAIL: Final = 3000
# prctl(2), looked up once in the supervisor: the child, between fork and exec, only calls it.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _die_with(parent: int) -> None:
    """In the child, before exec: SIGTERM when the supervisor `parent` dies (Linux), so nothing outlives it.

    The kernel sends it when the thread that forked ends: the event loop's, which
    lives as long as the supervisor. A supervisor that died before the prctl is
    caught by the getppid check."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)


def tell(text: str, out: TextIO | None = None) -> None:
    """`text` on the console (`out`, else stdout), unless the console is gone (a closed terminal)."""
    with contextlib.suppress(OSError, ValueError):
        print(text, file=out or sys.stdout, flush=True)


def log_tail(path: Path, limit: int = _TAIL) -> str:
    """The last whole lines of `path`, at most `limit` characters (the last line whole even if longer)."""
    if not path.exists():
        return ""
    text = path.read_text(errors="replace").rstrip("\n")
    if len(text) <= limit:
        return text
    cut = text.find("\n", len(text) - limit)
    return text[cut + 1 :] if cut >= 0 else text.rpartition("\n")[2]


def describe_exit(code: int) -> str:
    """``-9 (SIGKILL)`` for a signal, the plain code otherwise."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"{code} ({signal.Signals(-code).name})"
    return str(code)


async def http_ok(host: str, port: int, path: str) -> bool:
    """Whether ``GET path`` on host:port answers 200 within a second."""
    try:
        async with asyncio.timeout(1):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
                await writer.drain()
                status = await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return False
    parts = status.split()
    return len(parts) >= 2 and parts[1] == b"200"


async def nats_ok(host: str, port: int) -> bool:
    """Whether a NATS server on host:port greets with INFO within a second."""
    try:
        async with asyncio.timeout(1):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                line = await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return False
    return line.startswith(b"INFO ")


@dataclass(frozen=True, slots=True)
class Program:
    """One supervised program: its command line and environment (on top of the
    supervisor's), its log file, its readiness check and its stop group."""

    name: str
    argv: Sequence[str]
    env: dict[str, str]
    log_path: Path
    ready: ReadyCheck
    stop_group: int = 0


@dataclass(slots=True)
class _Child:
    program: Program
    backoff: Backoff
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    restarts: int = 0
    pids: list[int] = field(default_factory=list)


class Console:
    """Where the supervisor says what happens: the terminal and the stack log."""

    def __init__(self, log_path: Path, out: TextIO | None = None) -> None:
        self.log_path = log_path
        self._out = out

    def say(self, text: str) -> None:
        """On the console (if it is still there) and in the stack log."""
        tell(text, self._out)
        self.record(text)

    def record(self, text: str) -> None:
        """In the stack log only."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        with self.log_path.open("a") as log:
            log.write(f"{stamp} {text}\n")


class Supervisor:
    def __init__(self, programs: Sequence[Program], console: Console, policy: BackoffPolicy | None = None) -> None:
        policy = policy or BackoffPolicy()
        self._children = [_Child(program, Backoff(policy)) for program in programs]
        self._console = console
        self._keepers: list[asyncio.Task[None]] = []

    def pids(self) -> dict[str, int]:
        """The running programs' pids by name."""
        return {
            child.program.name: child.process.pid
            for child in self._children
            if child.process is not None and child.process.returncode is None
        }

    async def start_all(self, wait: float) -> None:
        """Start every program in order, each ready (within `wait` s) before the next."""
        for child in self._children:
            await self._spawn(child)
            try:
                async with asyncio.timeout(wait):
                    ready = await self._until_ready(child)
            except TimeoutError:
                raise StartFailed(self._failure(child, f"not ready after {wait:.0f} s")) from None
            if not ready:
                code = child.process.returncode if child.process else None
                raise StartFailed(self._failure(child, f"exited with code {describe_exit(code or 0)}"))

    def supervise(self) -> None:
        """From now on restart whatever exits (until `stop`)."""
        self._keepers = [asyncio.create_task(self._keep(child), name=child.program.name) for child in self._children]

    async def stop(self, wait: float = 15.0) -> None:
        """Stop restarting, then stop every program, highest stop group first."""
        for keeper in self._keepers:
            keeper.cancel()
        for keeper in self._keepers:
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        groups = sorted({child.program.stop_group for child in self._children}, reverse=True)
        for group in groups:
            await self._stop_group([c for c in self._children if c.program.stop_group == group], wait)

    async def _stop_group(self, children: list[_Child], wait: float) -> None:
        running = [c for c in children if c.process is not None and c.process.returncode is None]
        for child in running:
            assert child.process is not None
            with contextlib.suppress(ProcessLookupError):
                child.process.terminate()
        for child in running:
            assert child.process is not None
            try:
                await asyncio.wait_for(child.process.wait(), wait)
            except TimeoutError:
                self._console.say(f"{child.program.name} did not stop in {wait:.0f} s; killing it")
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
                await child.process.wait()
            self._console.record(
                f"{child.program.name} stopped with code {describe_exit(child.process.returncode or 0)}"
            )

    async def _spawn(self, child: _Child) -> None:
        program = child.program
        with program.log_path.open("ab") as log:
            child.process = await asyncio.create_subprocess_exec(
                *program.argv,
                env={**os.environ, **program.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=partial(_die_with, os.getpid()),
            )
        child.started_at = time.monotonic()
        child.pids.append(child.process.pid)
        self._console.record(f"{program.name} started (pid {child.process.pid})")

    async def _until_ready(self, child: _Child) -> bool:
        """True once the program's readiness check passes, False if it exits first."""
        process = child.process
        assert process is not None
        while process.returncode is None:
            if await child.program.ready():
                return process.returncode is None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), _READY_POLL)
        return False

    async def _keep(self, child: _Child) -> None:
        """Restart `child` whenever it exits, after its backoff; say so."""
        program = child.program
        while True:
            assert child.process is not None
            code = await child.process.wait()
            delay = child.backoff.delay(uptime=time.monotonic() - child.started_at)
            self._console.say(
                f"{program.name} exited with code {describe_exit(code)}; restarting in {delay:.1f} s"
                f" (log: {program.log_path})"
            )
            await asyncio.sleep(delay)
            await self._spawn(child)
            child.restarts += 1
            try:
                async with asyncio.timeout(_SLOW_READY):
                    ready = await self._until_ready(child)
            except TimeoutError:
                self._console.say(f"{program.name} restarted but not ready after {_SLOW_READY:.0f} s; still waiting")
                ready = await self._until_ready(child)
            if ready:
                self._console.say(f"{program.name} is back (pid {child.process.pid}, restart {child.restarts})")

    def _failure(self, child: _Child, what: str) -> str:
        path = child.program.log_path
        return f"{child.program.name} {what}; the end of {path}:\n{log_tail(path)}"
