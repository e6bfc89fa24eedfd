"""Live publishes handed to NATS together: one socket write per `linger`, not one per request.

On this machine a write to the NATS socket costs more CPU than the rest of a
publish request (it wakes nats-server on the other core); profiled under the
bench's closed loop it was about 40% of the API process. nats-py writes what
is pending once per loop turn, and at a few thousand requests a second a turn
rarely holds more than one. `Coalescer` keeps the publishes that arrive within
`linger` seconds and hands them to nats-py in one go, so they leave in one
write.

What a request is told is unchanged: a live publish is answered once it is
queued in this process (as nats-py's own buffer did), and what nats-py would
refuse at once (a closed or draining connection, a payload over the server's
limit) is still refused at once, as that request's error. A publish that fails
later, when handed over (the outbound buffer full during a long reconnect), is
logged and counted, like one lost in nats-py's buffer. `drain` hands over what
waits: a control command calls it first, so a backend that publishes and then
disconnects a user keeps that order. `linger` 0 hands each one over at once; a
batch of `max_batch` goes at once.
"""

from __future__ import annotations

import asyncio

import structlog
from nats.aio.client import Client as Nats
from nats.errors import ConnectionClosedError, ConnectionDrainingError, MaxPayloadError

from . import metrics

log = structlog.get_logger(__name__)

_Item = tuple[str, bytes, "dict[str, str] | None"]


class Coalescer:
    def __init__(self, nc: Nats, linger: float, max_batch: int = 512) -> None:
        self._nc = nc
        self._linger = linger
        self._max_batch = max_batch
        self._items: list[_Item] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()

    async def publish(self, subject: str, body: bytes, headers: dict[str, str] | None) -> None:
        """Publish on core NATS; raises what `Client.publish` raises at once."""
        nc = self._nc
        if self._linger <= 0:
            await nc.publish(subject, body, headers=headers)
            return
        if nc.is_closed:
            raise ConnectionClosedError
        if nc.is_draining_pubs:
            raise ConnectionDrainingError
        if len(body) > nc.max_payload:
            raise MaxPayloadError
        self._items.append((subject, body, headers))
        if len(self._items) >= self._max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._linger, self._flush)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        items, self._items = self._items, []
        if items:
            task = asyncio.get_running_loop().create_task(self._send(items))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, items: list[_Item]) -> None:
        nc = self._nc
        failed = 0
        error = ""
        for subject, body, headers in items:
            try:
                await nc.publish(subject, body, headers=headers)
            except Exception as exc:  # lost, as in nats-py's buffer; the others go on
                failed += 1
                error = type(exc).__name__
        if failed:
            metrics.LIVE_LOST.inc(failed)
            log.warning("live publishes lost", count=failed, error=error)

    async def drain(self) -> None:
        """Hand over what waits and wait for it: before a command that must not overtake it, and at stop."""
        self._flush()
        if self._sending:
            await asyncio.wait(set(self._sending))
