"""What `make run` checks before it starts or writes anything: one run per folder, free ports.

A second `make run` on the same run folder would start a second nats-server on
the live JetStream store and fail on a taken port only after that. Instead the
running supervisor holds an exclusive ``flock`` on ``.run/run.lock`` for its
whole life, with its pid (and nats-server's address, for `nats-url`) written
in it. The kernel drops the lock when the process ends, SIGKILL included, and
the children never hold it (the descriptor is close-on-exec), so a lock file
left by a killed supervisor never blocks the next run. Then every port the
stack will listen on is bound once: a taken one is named with the service that
wanted it and the option that moves it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from .errors import AlreadyRunning, PortTaken

LOCK_FILE: Final = "run.lock"
# How long to wait for a supervisor that holds the lock to write its pid.
_PID_WAIT: Final = 1.0


class RunLock:
    """The run folder's lock, held by the running `make run` until `release` (or its death)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, info: Mapping[str, Any]) -> None:
        """Take the lock and record this process's pid and `info`; `AlreadyRunning` when another holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = _holder_pid(self.path)
            who = f"pid {pid}" if pid else "pid unknown"
            hint = f"kill {pid}" if pid else f"fuser {self.path}"
            raise AlreadyRunning(
                f"another make run is running ({who}, run folder {self.path.parent}): stop it with Ctrl-C or {hint}",
                pid,
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps({"pid": os.getpid(), **info}) + "\n").encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def last_run(run_dir: Path) -> dict[str, Any]:
    """What the running (or last) `make run` recorded in its lock file; empty when nothing did."""
    with contextlib.suppress(OSError, ValueError):
        data = json.loads((run_dir / LOCK_FILE).read_text())
        if isinstance(data, dict):
            return data
    return {}


def _holder_pid(path: Path) -> int | None:
    """The pid the lock's holder wrote (it may still be writing it: wait a moment)."""
    deadline = time.monotonic() + _PID_WAIT
    while True:
        pid = last_run(path.parent).get("pid")
        if isinstance(pid, int) or time.monotonic() > deadline:
            return pid if isinstance(pid, int) else None
        time.sleep(0.05)


def check_ports(host: str, ports: Mapping[str, tuple[int, str]]) -> None:
    """`PortTaken` unless every port (service -> (port, option)) is distinct and free on `host`."""
    owners: dict[int, str] = {}
    for service, (port, option) in ports.items():
        if port in owners:
            raise PortTaken(f"port {port} is given to both {owners[port]} and {service}: change {option}")
        owners[port] = service
    for service, (port, option) in ports.items():
        _check_port(host, port, service, option)


def _check_port(host: str, port: int, service: str, option: str) -> None:
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, proto) as probe:
        # As the servers do: a port whose old connections linger in TIME_WAIT is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortTaken(
                    f"port {port} ({service}) is already in use on {host}: another program listens there;"
                    f" stop it or give {service} another port ({option})"
                ) from None
            raise PortTaken(f"cannot listen on {host}:{port} ({service}): {exc.strerror}") from None
