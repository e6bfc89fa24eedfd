"""One scaled time unit for every wait in the tests.

``MESHCAST_TEST_TIMEOUT_SCALE=3`` triples every timeout on a slow machine.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

SCALE = float(os.environ.get("MESHCAST_TEST_TIMEOUT_SCALE", "1"))

T = TypeVar("T")


def timeout(seconds: float = 5.0) -> float:
    """`seconds` scaled for this machine."""
    return seconds * SCALE


def wait_until(predicate: Callable[[], bool], seconds: float = 5.0, what: str = "condition") -> None:
    """Poll `predicate` until true; TimeoutError naming `what` after the scaled timeout."""
    deadline = time.monotonic() + timeout(seconds)
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


async def wait_until_async(
    predicate: Callable[[], bool | Awaitable[bool]], seconds: float = 5.0, what: str = "condition", every: float = 0.02
) -> None:
    """Poll `predicate` (plain or async) every `every` seconds until true; TimeoutError
    naming `what` after the scaled timeout."""
    deadline = time.monotonic() + timeout(seconds)
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(every)


async def within(awaitable: Awaitable[T], seconds: float = 5.0) -> T:
    """`await awaitable`, bounded by the scaled timeout."""
    return await asyncio.wait_for(awaitable, timeout(seconds))


def token_ttl(seconds: float = 2.0) -> int:
    """A JWT lifetime (whole seconds) that lives at least the scaled `seconds`.

    A token's ``exp`` is an integer: one made with ``ttl=1`` at x.99 s expires
    at x+1, 10 ms later. One more second than the scaled time covers that."""
    return math.ceil(timeout(seconds)) + 1
