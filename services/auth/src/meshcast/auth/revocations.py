"""Revocations on NATS: the KV bucket gateways watch, and control messages to every gateway.

The bucket (`meshcast.tokens.revocations.BUCKET`) is created at start, or
updated when its TTL or replicas changed; a bucket deleted while running is
recreated by the next write. Every call is bounded by one timeout and fails
with `Unavailable` while NATS is away: the caller retries, and since every
write is idempotent a retry is harmless.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import structlog
from nats.aio.client import Client as Nats
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import (
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoStreamResponseError,
    NotFoundError,
)
from nats.js.kv import KeyValue

from meshcast.proto.bus_pb2 import Control
from meshcast.tokens.revocations import BUCKET, jti_key, user_key

from .errors import Unavailable

log = structlog.get_logger(__name__)

STREAM = f"KV_{BUCKET}"
# Optimistic writes of a user's revocation lost to a concurrent writer, retried this often.
_USER_WRITE_ATTEMPTS = 5

T = TypeVar("T")


def _seconds(value: bytes | None) -> float | None:
    try:
        return float(value.decode()) if value else None
    except (ValueError, UnicodeDecodeError):
        return None


class NatsRevocations:
    def __init__(self, nc: Nats, control_subject: str, *, ttl: int, replicas: int, timeout: float) -> None:
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream(timeout=timeout)
        self._control = control_subject
        self._ttl = ttl
        self._replicas = replicas
        self._timeout = timeout
        self._kv: KeyValue | None = None
        self._ensuring: asyncio.Future[KeyValue] | None = None

    @property
    def ttl(self) -> int:
        return self._ttl

    async def ensure_bucket(self) -> KeyValue:
        """Create the bucket, or bring an existing one to the configured TTL and replicas.

        One at a time: a revocation arriving while the start-up creation is under way
        waits for that one (a caller's own timeout does not cancel it) instead of racing it."""
        if self._ensuring is None or self._ensuring.done():
            self._ensuring = asyncio.ensure_future(self._ensure_bucket())
        return await asyncio.shield(self._ensuring)

    async def _ensure_bucket(self) -> KeyValue:
        try:
            info = await self._js.stream_info(STREAM)
        except NotFoundError:
            bucket = KeyValueConfig(
                bucket=BUCKET,
                description="Meshcast token revocations (written by the auth service, watched by gateways)",
                history=1,
                ttl=self._ttl,
                replicas=self._replicas,
                storage=StorageType.FILE,
            )
            self._kv = await self._js.create_key_value(bucket)
            log.info("revocation bucket created", bucket=BUCKET, ttl=self._ttl, replicas=self._replicas)
            return self._kv
        config = info.config
        if config.max_age != self._ttl or config.num_replicas != self._replicas:
            window = min(config.duplicate_window or self._ttl, self._ttl)
            await self._js.update_stream(
                config.evolve(max_age=self._ttl, num_replicas=self._replicas, duplicate_window=window)
            )
            log.info("revocation bucket updated", bucket=BUCKET, ttl=self._ttl, replicas=self._replicas)
        self._kv = await self._js.key_value(BUCKET)
        return self._kv

    @asynccontextmanager
    async def _bounded(self, what: str) -> AsyncIterator[None]:
        """One call's bound: fail fast when disconnected, `Unavailable` on any NATS failure."""
        if not self._nc.is_connected:
            raise Unavailable(f"{what}: NATS is not connected")
        try:
            async with asyncio.timeout(self._timeout):
                yield
        except TimeoutError as exc:
            raise Unavailable(f"{what}: NATS did not answer within {self._timeout} s") from exc
        except NatsError as exc:  # the root of nats-py's errors, JetStream's included
            raise Unavailable(f"{what}: {type(exc).__name__}") from exc

    async def _with_bucket(self, write: Callable[[KeyValue], Awaitable[T]]) -> T:
        kv = self._kv or await self.ensure_bucket()
        try:
            return await write(kv)
        except (NoStreamResponseError, BucketNotFoundError):
            log.warning("revocation bucket missing, recreating", bucket=BUCKET)
            return await write(await self.ensure_bucket())

    async def revoke_jti(self, jti: str, at: int) -> None:
        """Mark the token `jti` revoked (value: the revocation time)."""
        async with self._bounded("revoke token"):
            await self._with_bucket(lambda kv: kv.put(jti_key(jti), str(at).encode()))

    async def revoke_user(self, user: str, before: int) -> int:
        """Revoke `user`'s tokens issued before `before`; the stored time never moves back.

        Returns the time in force (a later one already stored wins), after
        writing it again so its entry lives another TTL.
        """
        async with self._bounded("revoke user"):
            return await self._with_bucket(lambda kv: self._raise_user_floor(kv, user, before))

    async def _raise_user_floor(self, kv: KeyValue, user: str, before: int) -> int:
        key = user_key(user)
        for _ in range(_USER_WRITE_ATTEMPTS):
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                entry = None
            current = _seconds(entry.value) if entry is not None else None
            value = before if current is None else max(before, math.ceil(current))
            try:
                if entry is None:
                    await kv.create(key, str(value).encode())
                else:
                    await kv.update(key, str(value).encode(), last=entry.revision)
            except KeyWrongLastSequenceError:
                continue  # another instance wrote meanwhile: read again
            return value
        raise Unavailable("revoke user: too many concurrent writes")

    async def publish_control(self, control: Control) -> None:
        """Send `control` to every gateway; returns once the server has it."""
        async with self._bounded("publish control"):
            await self._nc.publish(self._control, control.SerializeToString())
            # The outer bound cuts this short; flush only takes whole seconds.
            await self._nc.flush(timeout=math.ceil(self._timeout))
