"""One event to the endpoint: POSTed until answered 2xx, else stored as a dead letter.

`Delivery.deliver` POSTs the signed body; a non-2xx answer (a redirect
included: none is followed), a timeout or a network error is a failure, tried
again after `retry_delay`; after `max_attempts` failures the event goes,
unchanged, to ``<p>.events.v1.dead.<kind>[.<ns>.<channel>]`` with the last
error in its headers, stored before `deliver` returns (tried until it is;
its ``Nats-Msg-Id`` ``dead:<durable>:<seq>`` stores a retry once). Either way
the caller may then acknowledge the event.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Protocol

import aiohttp
import structlog
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import Error as JetStreamError

from meshcast.bus import store
from meshcast.bus.retry import retrying

from . import metrics
from .lanes import retry_delay
from .signing import post_headers

log = structlog.get_logger(__name__)

# Dead-letter headers: why, after how many POSTs, by which relay, of which stream message.
ERROR_HEADER: Final = "Meshcast-Webhook-Error"
ATTEMPTS_HEADER: Final = "Meshcast-Webhook-Attempts"
RELAY_HEADER: Final = "Meshcast-Webhook-Relay"
SEQUENCE_HEADER: Final = "Meshcast-Event-Sequence"
EVENT_ID_HEADER: Final = "Meshcast-Event-Id"
# How much of an error goes into a header, and how much of an answer is read.
MAX_ERROR: Final = 512
MAX_ANSWER: Final = 64 * 1024


class Endpoint(Protocol):
    async def post(self, body: bytes, headers: Mapping[str, str]) -> str | None:
        """None when the endpoint answered 2xx, else what went wrong (short, no secret)."""


class HttpEndpoint:
    """The webhook URL over aiohttp: one session, at most `connections` at once, no redirects."""

    def __init__(self, url: str, *, timeout: float, connections: int) -> None:
        self._url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._seconds = timeout
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self._connections)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def post(self, body: bytes, headers: Mapping[str, str]) -> str | None:
        assert self._session is not None, "HttpEndpoint.start was not called"
        try:
            async with self._session.post(self._url, data=body, headers=dict(headers), allow_redirects=False) as resp:
                await resp.content.read(MAX_ANSWER)
                return None if 200 <= resp.status < 300 else f"HTTP {resp.status}"
        except TimeoutError:
            return f"no answer within {self._seconds:g}s"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"[:MAX_ERROR]


@dataclass(frozen=True, slots=True)
class Job:
    """One event to deliver: the stream message's sequence, id, data and what was decoded."""

    seq: int
    event_id: str
    kind: str
    channel: str | None
    data: bytes
    body: bytes


@dataclass(frozen=True, slots=True)
class Policy:
    max_attempts: int
    backoff_initial: float
    backoff_max: float
    jitter: bool
    dead_letter_timeout: float


class Delivery:
    def __init__(
        self,
        endpoint: Endpoint,
        secret: bytes,
        policy: Policy,
        *,
        js: JetStreamContext,
        dead_letter_subject: DeadLetterSubject,
        relay: str,
    ) -> None:
        self._endpoint = endpoint
        self._secret = secret
        self._policy = policy
        self._js = js
        self._dead_letter_subject = dead_letter_subject
        self._relay = relay

    async def deliver(self, job: Job) -> bool:
        """POST `job` until 2xx (True) or `max_attempts` failures, then dead-letter it (False)."""
        policy = self._policy
        error = ""
        for attempt in range(1, policy.max_attempts + 1):
            headers = post_headers(self._secret, job.body, event_id=job.event_id, kind=job.kind, attempt=attempt)
            started = time.perf_counter()
            failure = await self._endpoint.post(job.body, headers)
            metrics.LATENCY.labels("ok" if failure is None else "error").observe(time.perf_counter() - started)
            if failure is None:
                metrics.DELIVERED.labels(job.kind).inc()
                if attempt > 1:
                    log.info("webhook delivered after retries", event_id=job.event_id, seq=job.seq, attempts=attempt)
                return True
            error = failure
            metrics.FAILURES.labels(job.kind).inc()
            if attempt == policy.max_attempts:
                break
            delay = retry_delay(
                attempt,
                initial=policy.backoff_initial,
                cap=policy.backoff_max,
                jitter=0.5 + random.random() / 2 if policy.jitter else 1.0,
            )
            log.info("webhook failed, retrying", event_id=job.event_id, attempt=attempt, error=error, retry_in=delay)
            metrics.RETRIES.labels(job.kind).inc()
            await asyncio.sleep(delay)
        await self._dead_letter(job, error, policy.max_attempts)
        return False

    async def _dead_letter(self, job: Job, error: str, attempts: int) -> None:
        subject = self._dead_letter_subject(job.kind, job.channel)
        headers = {
            ERROR_HEADER: _header_safe(error),
            ATTEMPTS_HEADER: str(attempts),
            RELAY_HEADER: self._relay,
            SEQUENCE_HEADER: str(job.seq),
            EVENT_ID_HEADER: job.event_id,
        }
        timeout = self._policy.dead_letter_timeout

        async def attempt(_: float) -> object:
            return await store(
                self._js,
                subject,
                job.data,
                headers=headers,
                msg_id=f"dead:{self._relay}:{job.seq}",
                deadline=timeout,
                ack_timeout=timeout,
            )

        await retrying(
            attempt,
            what="dead letter",
            attempt_timeout=timeout,
            retry_if=lambda exc: isinstance(exc, NatsError | JetStreamError | TimeoutError),
            max_delay=5.0,
        )
        metrics.DEAD_LETTERS.labels(job.kind).inc()
        log.warning("webhook gave up: dead letter stored", event_id=job.event_id, seq=job.seq, error=error)


class DeadLetterSubject(Protocol):
    def __call__(self, kind: str, channel: str | None = None) -> str: ...


def _header_safe(text: str) -> str:
    """`text` as one header line: no CR/LF, bounded."""
    return " ".join(text.split())[:MAX_ERROR] or "unknown error"
