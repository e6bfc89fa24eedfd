"""Keys from a JWKS URL: cached, refreshed on a schedule and on an unknown ``kid``."""

from __future__ import annotations

import asyncio
import time
import urllib.request

import structlog

from .keys import KeyError_, VerificationKey, keys_from_jwks

log = structlog.get_logger(__name__)


class JwksSource:
    def __init__(
        self,
        url: str,
        *,
        refresh_interval: float = 300.0,
        min_refresh_interval: float = 10.0,
        timeout: float = 5.0,
    ) -> None:
        if not url.startswith(("https://", "http://")):
            raise KeyError_(f"JWKS URL must be http(s): {url!r}")
        self.url = url
        self._refresh_interval = refresh_interval
        self._min_interval = min_refresh_interval
        self._timeout = timeout
        self._keys: list[VerificationKey] = []
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def keys(self, *, unknown_kid: bool = False) -> list[VerificationKey]:
        """The current keys; refetched when stale, or (at most every
        `min_refresh_interval` s) when a token names a kid we do not know: rotation."""
        if self._stale(unknown_kid):
            async with self._lock:
                if self._stale(unknown_kid):  # another caller may have just refreshed
                    await self._refresh()
        return self._keys

    def _stale(self, unknown_kid: bool) -> bool:
        age = time.monotonic() - self._fetched_at
        return age > self._refresh_interval or (unknown_kid and age > self._min_interval)

    async def _refresh(self) -> None:
        try:
            body = await asyncio.to_thread(self._fetch)
            self._keys = keys_from_jwks(body)
            log.info("jwks refreshed", url=self.url, keys=len(self._keys))
        except (OSError, ValueError, KeyError_) as exc:
            # Keep the keys we had: a JWKS outage must not lock every user out.
            log.warning("jwks refresh failed", url=self.url, error=str(exc))
        self._fetched_at = time.monotonic()

    def _fetch(self) -> str:
        with urllib.request.urlopen(self.url, timeout=self._timeout) as resp:
            body: bytes = resp.read(1_000_000)
        return body.decode()
