"""Child processes that stop when they should: never orphaned, never half-signalled."""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
from typing import Any

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: SIGTERM when the parent dies (Linux), so nothing outlives a crash."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start `args` in its own session: a terminal's Ctrl-C reaches only the
    parent, which stops its children in order (gateways before NATS)."""
    return subprocess.Popen(args, start_new_session=True, preexec_fn=_die_with_parent, **kwargs)


def stop_process(proc: subprocess.Popen[Any] | None, wait: float) -> int | None:
    """SIGTERM, then SIGKILL if `proc` has not stopped within `wait` seconds; its exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode
