"""Reads that ride through a JetStream election: the whole read again, with backoff, until a deadline.

A stream whose leader dies or stalls answers nothing, 503 or "no responders"
for the 4-10 s its replicas take to elect another. Nothing is lost meanwhile,
so a recovery that gave up then would cost a client its state for nothing.
A read (position, recover, history) is a pure function of what it reads, so
the whole read is tried again from the start, never resumed: its verdict
always comes from one consistent set of reads. Only `StoreUnavailable` is
retried; once the deadline has passed it goes up as it is, and the caller
answers a temporary error (an SDK retries that), not a verdict.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from meshcast.bus.retry import retrying

from . import metrics
from .store import StoreUnavailable

T = TypeVar("T")


def _unavailable(exc: BaseException) -> bool:
    return isinstance(exc, StoreUnavailable)


async def retry_unavailable(attempt: Callable[[], Awaitable[T]], *, deadline: float, endpoint: str) -> T:
    """`attempt()`, tried again after each `StoreUnavailable` while `deadline` seconds have not passed."""
    return await retrying(
        lambda _: attempt(),
        what=endpoint,
        deadline=deadline,
        attempt_timeout=deadline,
        retry_if=_unavailable,
        on_retry=metrics.RETRIES.labels(endpoint).inc,
    )
