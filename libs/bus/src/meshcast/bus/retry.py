"""Riding through a JetStream election: an idempotent call, tried again until a deadline.

A stream whose leader dies or stalls answers nothing, 503 or "no
responders" for the few seconds its replicas take to elect another; nothing
is lost meanwhile. A call that is safe to repeat (a publish carrying its
``Nats-Msg-Id``, which the stream stores once within its duplicate window;
a read) is tried again with backoff while the deadline has not passed, each
try bounded by what is left of it. Any other failure goes up at once; past
the deadline the last election failure goes up, and the caller answers a
temporary error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from nats.errors import NoRespondersError
from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError

log = structlog.get_logger(__name__)

T = TypeVar("T")

# What a stream without a leader looks like to a request: no answer (nats-py's
# TimeoutError is an asyncio.TimeoutError), no responders (a publish sees it as
# NoStreamResponseError), or 503.
ELECTION_FAILURES: tuple[type[Exception], ...] = (
    NoRespondersError,
    NoStreamResponseError,
    ServiceUnavailableError,
    TimeoutError,
)

# JetStream API errors of a cluster that cannot answer now: 10005 no suitable peers
# for placement (a cluster still forming its quorum), 10008 JetStream temporarily
# unavailable, 10023 insufficient resources, 10074 (placement during an election).
NOT_READY_API_ERRORS: frozenset[int] = frozenset({10005, 10008, 10023, 10074})

FIRST_DELAY = 0.05
MAX_DELAY = 1.0


def unavailable(exc: BaseException) -> bool:
    """Whether `exc` says JetStream cannot answer now (ask again), not that the request is wrong."""
    if isinstance(exc, ELECTION_FAILURES):
        return True
    return isinstance(exc, APIError) and exc.err_code in NOT_READY_API_ERRORS


Retryable = Callable[[BaseException], bool]


async def retrying(
    attempt: Callable[[float], Awaitable[T]],
    *,
    what: str,
    deadline: float | None = None,
    attempt_timeout: float = 5.0,
    retry_if: Retryable = unavailable,
    first_delay: float = FIRST_DELAY,
    max_delay: float = MAX_DELAY,
    on_retry: Callable[[], None] | None = None,
) -> T:
    """`attempt(timeout)` until it succeeds, fails in a way `retry_if` rejects, or
    `deadline` seconds pass (None: never); backoff doubles from `first_delay` to
    `max_delay`, and each try waits at most `attempt_timeout` (and what is left)."""
    loop = asyncio.get_running_loop()
    give_up = None if deadline is None else loop.time() + deadline
    delay = first_delay
    tries = 1
    while True:
        left = attempt_timeout if give_up is None else min(attempt_timeout, give_up - loop.time())
        try:
            result = await attempt(max(left, 0.001))
        except Exception as exc:
            if not retry_if(exc):
                raise
            error = str(exc) or type(exc).__name__
            if give_up is not None and loop.time() + delay >= give_up:
                log.warning("jetstream unavailable past the deadline", what=what, tries=tries, error=error)
                raise
            log.info("jetstream unavailable, retrying", what=what, tries=tries, error=error, retry_in=delay)
            if on_retry is not None:
                on_retry()
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)
            tries += 1
            continue
        if tries > 1:
            log.info("jetstream answered again", what=what, tries=tries)
        return result


async def until_ready(attempt: Callable[[], Awaitable[T]], *, what: str, max_delay: float = 5.0) -> T:
    """`attempt()` until JetStream answers it, however long that takes (a service
    starting before its cluster has a quorum waits, not-ready, instead of exiting).
    Only `unavailable` failures are waited out; any other goes up at once."""
    return await retrying(lambda _: attempt(), what=what, first_delay=0.2, max_delay=max_delay)


async def through_election(
    attempt: Callable[[float], Awaitable[T]], *, deadline: float, attempt_timeout: float, what: str
) -> T:
    """`attempt(timeout)` until it succeeds, fails otherwise, or `deadline` seconds pass."""
    return await retrying(attempt, what=what, deadline=deadline, attempt_timeout=attempt_timeout)
