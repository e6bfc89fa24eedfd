"""The drain schedule (gateway/drain.py): closes spread evenly over the window, in batches."""

from __future__ import annotations

import math

from meshcast.gateway.drain import drain_clients, due
from meshcast.protocol import Disconnect, DisconnectCode

SHUTDOWN = Disconnect.of(DisconnectCode.SHUTDOWN)


class VirtualTime:
    """A clock that moves only when the drain sleeps (plus `lag` per sleep: a late loop)."""

    def __init__(self, lag: float = 0.0) -> None:
        self.now = 0.0
        self.lag = lag
        self.sleeps = 0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds + self.lag


class Recorder:
    def __init__(self, time: VirtualTime, closes: list[float]) -> None:
        self._time = time
        self._closes = closes
        self.disconnect: Disconnect | None = None

    def close(self, disconnect: Disconnect) -> None:
        assert self.disconnect is None, "closed twice"
        self.disconnect = disconnect
        self._closes.append(self._time.now)


async def _drain(count: int, window: float, tick: float, lag: float = 0.0) -> tuple[list[float], VirtualTime]:
    time = VirtualTime(lag)
    closes: list[float] = []
    clients = [Recorder(time, closes) for _ in range(count)]
    await drain_clients(clients, SHUTDOWN, window=window, tick=tick, clock=time.clock, sleep=time.sleep)
    assert all(c.disconnect == SHUTDOWN for c in clients)
    return closes, time


def test_due_spreads_clients_evenly_over_the_window() -> None:
    assert due(10, 10.0, 0.0) == 1
    assert due(10, 10.0, 0.999) == 1
    assert due(10, 10.0, 1.0) == 2
    assert due(10, 10.0, 9.5) == 10
    assert due(10, 10.0, 42.0) == 10
    assert due(100_000, 10.0, 5.0) == 50_001
    assert due(0, 10.0, 1.0) == 0


def test_due_without_a_window_closes_everyone_at_once() -> None:
    assert due(5000, 0.0, 0.0) == 5000


async def test_many_clients_are_closed_in_batches_over_the_whole_window() -> None:
    # 100,000 clients over 10 s: far above drain_seconds x 1000, where pacing once stopped.
    count, window, tick = 100_000, 10.0, 0.05
    closes, time = await _drain(count, window, tick)
    assert len(closes) == count
    assert closes[0] == 0.0
    assert closes[-1] >= window - tick
    assert closes[-1] <= window + 1e-6
    # One sleep a tick, never one a client.
    assert time.sleeps <= math.ceil(window / tick)
    # Every tick's batch holds its even share of the clients, not more.
    share = count * tick / window
    per_tick: dict[int, int] = {}
    for at in closes:
        per_tick[round(at / tick)] = per_tick.get(round(at / tick), 0) + 1
    assert max(per_tick.values()) <= share + 1
    # Every second of the window closes a tenth of the clients.
    for second in range(int(window)):
        in_second = sum(1 for at in closes if second <= at < second + 1)
        assert abs(in_second - count / window) <= share + 1, (second, in_second)


async def test_few_clients_are_closed_one_at_a_time_at_their_due_time() -> None:
    closes, time = await _drain(4, 10.0, 0.05)
    assert closes == [0.0, 2.5, 5.0, 7.5]
    assert time.sleeps == 3


async def test_a_late_loop_closes_bigger_batches_and_still_ends_on_time() -> None:
    # Each tick wakes 50 ms late (a busy loop): the drain catches up instead of drifting.
    count, window = 20_000, 2.0
    closes, _ = await _drain(count, window, tick=0.05, lag=0.05)
    assert len(closes) == count
    assert closes[-1] <= window + 0.1
    assert closes[count // 2] <= window / 2 + 0.1


async def test_no_window_closes_every_client_without_sleeping() -> None:
    closes, time = await _drain(1000, 0.0, 0.05)
    assert closes == [0.0] * 1000
    assert time.sleeps == 0
