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

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from . import metrics
from .store import StoreUnavailable

log = structlog.get_logger(__name__)

T = TypeVar("T")

FIRST_DELAY = 0.05
MAX_DELAY = 1.0


async def retry_unavailable(attempt: Callable[[], Awaitable[T]], *, deadline: float, endpoint: str) -> T:
    """`attempt()`, tried again after each `StoreUnavailable` while `deadline` seconds have not passed."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline
    delay = FIRST_DELAY
    tries = 1
    while True:
        try:
            result = await attempt()
        except StoreUnavailable as exc:
            if loop.time() + delay >= give_up:
                log.warning("jetstream unavailable past the deadline", endpoint=endpoint, tries=tries, error=str(exc))
                raise
            metrics.RETRIES.labels(endpoint).inc()
            log.info("jetstream unavailable, retrying", endpoint=endpoint, tries=tries, error=str(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_DELAY)
            tries += 1
            continue
        if tries > 1:
            log.info("jetstream answered again", endpoint=endpoint, tries=tries)
        return result
