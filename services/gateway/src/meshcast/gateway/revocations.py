"""Revoked tokens and users, from the auth service's KV bucket, watched live.

The gateway only reads: it waits for the bucket (the auth service creates
it), keeps every revocation in memory through a KV watch, and refuses a
connect or refresh with a revoked token (3500). Connections already open
are closed by the control message the auth service sends with a revocation.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from nats.aio.client import Client as Nats
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KV_DEL, KV_PURGE

from meshcast.tokens.revocations import BUCKET, Revocations

log = structlog.get_logger(__name__)


class RevocationWatch:
    def __init__(self, nc: Nats, retry_interval: float = 5.0, ttl: float = 86400.0) -> None:
        self.revocations = Revocations()
        self._nc = nc
        self._retry = retry_interval
        self._ttl = ttl
        self._tasks: list[asyncio.Task[None]] = []
        self.watching = False

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run()), asyncio.create_task(self._forget())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _forget(self) -> None:
        """Entries the bucket expired by age (no event reaches a watcher) leave memory too."""
        while True:
            await asyncio.sleep(min(self._ttl, 60.0))
            dropped = self.revocations.forget_older_than(time.time() - self._ttl)
            if dropped:
                log.info("expired revocations forgotten", count=dropped)

    async def _run(self) -> None:
        js = self._nc.jetstream()
        while True:
            try:
                kv = await js.key_value(BUCKET)
                watcher = await kv.watchall()
                self.watching = True
                log.info("watching revocations", bucket=BUCKET)
                async for entry in watcher:
                    if entry is None:
                        continue  # the initial values are all in
                    deleted = entry.operation in (KV_DEL, KV_PURGE)
                    self.revocations.apply(entry.key, None if deleted else entry.value)
            except (BucketNotFoundError, NotFoundError):
                pass  # no auth service yet: nothing revoked
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("revocation watch failed", error=str(exc))
            self.watching = False
            await asyncio.sleep(self._retry)
