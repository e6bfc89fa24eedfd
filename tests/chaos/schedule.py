"""The faults, and the two schedules that order them.

Each fault injects, holds for a while, and repairs; the load runs through all
of it. `SHORT` runs inside `make test`; `FULL` (``MESHCAST_CHAOS_SCHEDULE=full``,
`make chaos`) runs every fault, with longer holds and many more clients.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError

from meshcast.testing import timeout

from .load import FULL as FULL_SHAPE
from .load import SHORT as SHORT_SHAPE
from .load import Shape
from .stack import STREAM, Stack

Action = Callable[[Stack, float], Awaitable[str]]


@dataclass(frozen=True)
class Fault:
    name: str
    action: Action  # inject, hold `hold` seconds, repair; returns what exactly it hit
    hold: float
    known_defect: str | None = None  # a product defect this entry reveals (xfail with this reason)

    @property
    def id(self) -> str:
        return self.name.replace(" ", "-")


async def _hold(seconds: float) -> None:
    await asyncio.sleep(seconds)  # the fault's duration: bounded by definition


async def stream_leader(stack: Stack) -> str:
    """The server leading the history stream (asked until an election settles, bounded)."""
    js = stack.admin.jetstream(timeout=timeout(5))
    for _ in range(60):
        with_leader = None
        try:
            info = await js.stream_info(STREAM)
            with_leader = info.cluster.leader if info.cluster else None
        except (NatsError, JetStreamError, TimeoutError):
            pass
        if with_leader:
            return with_leader
        await asyncio.sleep(0.5)
    raise TimeoutError("the history stream has no leader")


async def _node_back(stack: Stack, name: str) -> None:
    node = stack.cluster.node(name)
    await asyncio.to_thread(node.start)


async def partition_stream_leader(stack: Stack, hold: float) -> str:
    name = await stream_leader(stack)
    ns = stack.cluster.node(name).namespace
    await asyncio.to_thread(ns.partition)
    try:
        await _hold(hold)
    finally:
        await asyncio.to_thread(ns.heal)
    return name


async def _meta_leader(stack: Stack) -> str:
    """The meta leader, once there is one (right after a partition heals there may be none)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout(30)
    while (name := await asyncio.to_thread(stack.cluster.meta_leader)) is None:
        assert loop.time() < deadline, "no JetStream meta leader"
        await asyncio.sleep(0.2)
    return name


async def kill_meta_leader(stack: Stack, hold: float) -> str:
    name = await _meta_leader(stack)
    await asyncio.to_thread(stack.cluster.node(name).kill)
    await _hold(hold)
    await _node_back(stack, name)
    return name


async def kill_gateway(stack: Stack, hold: float) -> str:
    gw = stack.gateways[0]
    await asyncio.to_thread(gw.kill)
    await _hold(hold)
    await asyncio.to_thread(gw.start, 30)
    return gw.env["MESHCAST_NODE_NAME"]


async def pause_gateway(stack: Stack, hold: float) -> str:
    gw = stack.gateways[1]
    gw.signal(signal.SIGSTOP)
    try:
        await _hold(hold)
    finally:
        gw.signal(signal.SIGCONT)
    return gw.env["MESHCAST_NODE_NAME"]


async def roll_gateways(stack: Stack, hold: float) -> str:
    """SIGTERM each gateway in turn (it drains: clients move), start it again, next."""
    for gw in stack.gateways:
        await asyncio.to_thread(gw.terminate, 30)
        await asyncio.to_thread(gw.start, 30)
        await _hold(hold)
    return "g1,g2,g3"


async def kill_history(stack: Stack, hold: float) -> str:
    """Every history instance SIGKILLed while every client reconnects (recovery needs history)."""
    for proc in stack.history:
        await asyncio.to_thread(proc.kill)
    await stack.balancer.cut()
    stack.balancer.heal()
    await _hold(hold)
    await asyncio.gather(*(asyncio.to_thread(p.start, 60) for p in stack.history))
    return "history-1,history-2"


async def kill_presence(stack: Stack, hold: float) -> str:
    """Every presence instance SIGKILLed and started again: their state comes back from the gateways."""
    for proc in stack.presence:
        await asyncio.to_thread(proc.kill)
    await _hold(hold)
    await asyncio.gather(*(asyncio.to_thread(p.start, 60) for p in stack.presence))
    return "presence-1,presence-2"


async def netem_gateway(stack: Stack, hold: float) -> str:
    gw = stack.gateways[2]
    ns = stack.gateway_ns(gw)
    applied = await asyncio.to_thread(ns.impair, 100, 30, 3.0)
    try:
        await _hold(hold)
    finally:
        await asyncio.to_thread(ns.heal)
    return f"{gw.env['MESHCAST_NODE_NAME']} {applied}"


@dataclass(frozen=True)
class Schedule:
    name: str
    shape: Shape
    faults: tuple[Fault, ...]
    per_fault_timeout: float  # pytest-timeout of one fault's test


SHORT = Schedule(
    "short",
    SHORT_SHAPE,
    (
        Fault("partition stream leader", partition_stream_leader, 4),
        Fault("kill meta leader", kill_meta_leader, 3),
        Fault("kill gateway", kill_gateway, 2),
    ),
    per_fault_timeout=120,
)

FULL = Schedule(
    "full",
    FULL_SHAPE,
    (
        Fault("kill meta leader", kill_meta_leader, 8),
        Fault("kill gateway", kill_gateway, 5),
        Fault("pause gateway", pause_gateway, 8),
        Fault("roll gateways", roll_gateways, 2),
        Fault("kill history", kill_history, 3),
        Fault("kill presence", kill_presence, 3),
        Fault("netem gateway", netem_gateway, 10),
        Fault("partition stream leader", partition_stream_leader, 10),
    ),
    per_fault_timeout=300,
)


def selected() -> Schedule:
    """The schedule ``MESHCAST_CHAOS_SCHEDULE`` names (``short`` by default)."""
    name = os.environ.get("MESHCAST_CHAOS_SCHEDULE", "short")
    schedules = {s.name: s for s in (SHORT, FULL)}
    if name not in schedules:
        raise ValueError(f"MESHCAST_CHAOS_SCHEDULE={name!r}: choose one of {sorted(schedules)}")
    return schedules[name]
