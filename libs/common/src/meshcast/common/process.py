"""This process's CPU and memory, as the server API's `info` reports them (stdlib only)."""

from __future__ import annotations

import os
import resource
import time


class ProcessStats:
    """CPU use in percent of one core since the previous `sample`, and resident memory."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._wall = self.started
        self._cpu = time.process_time()

    def uptime(self) -> int:
        return int(time.monotonic() - self.started)

    def sample(self) -> tuple[float, int]:
        """(cpu percent since the previous sample, rss bytes)."""
        wall, cpu = time.monotonic(), time.process_time()
        elapsed = wall - self._wall
        percent = 100.0 * (cpu - self._cpu) / elapsed if elapsed > 0 else 0.0
        self._wall, self._cpu = wall, cpu
        return round(percent, 2), rss_bytes()


def rss_bytes() -> int:
    """Resident set size now (Linux /proc), else the peak the kernel reports."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
