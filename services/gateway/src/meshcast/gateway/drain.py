"""Graceful drain: every client closed with a reconnect code, spread evenly over a window.

Invariants:
- Client ``i`` of ``n`` is due ``i * window / n`` seconds into the drain, whatever ``n``:
  ten clients or a million, the reconnects reach the other gateways at an even rate, never
  as one stampede.
- The pacing is one loop closing a batch per tick (every client due by then), never a task
  or a timer per client. How many are due is computed from the clock each tick, so a
  late tick (a busy loop, a big batch) closes more next time and the drain still ends on
  time instead of drifting.
- `due` is pure (the elapsed time is passed in): the schedule is tested synchronously.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from meshcast.protocol import Disconnect


class Closable(Protocol):
    def close(self, disconnect: Disconnect) -> None: ...


def due(count: int, window: float, elapsed: float) -> int:
    """How many of `count` clients are due `elapsed` seconds into a drain of `window` seconds."""
    if count <= 0:
        return 0
    if window <= 0 or elapsed >= window:
        return count
    if elapsed < 0:
        return 0
    return min(count, math.floor(count * elapsed / window) + 1)


def next_due(count: int, window: float, closed: int) -> float:
    """When (seconds into the drain) client number `closed` is due."""
    return closed * window / count if count else 0.0


async def drain_clients(
    clients: Sequence[Closable],
    disconnect: Disconnect,
    *,
    window: float,
    tick: float,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Close `clients` with `disconnect`, spread evenly over `window` seconds, a batch every
    `tick` seconds at most (fewer ticks when the clients are few: it sleeps until the next
    one is due). `clock` and `sleep` default to the event loop's."""
    count = len(clients)
    now = clock or asyncio.get_running_loop().time
    start = now()
    closed = 0
    while closed < count:
        target = due(count, window, now() - start)
        for client in clients[closed:target]:
            client.close(disconnect)
        closed = target
        if closed < count:
            wait = next_due(count, window, closed) - (now() - start)
            await sleep(max(tick, wait))
