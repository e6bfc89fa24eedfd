"""The relay's ordering, sharding and backoff rules: pure, no I/O, no clock.

Ordering key (`ordering_key`): an event of a channel kind (subscribe,
unsubscribe, publication, channel_occupied/vacated) is ordered with the other
events of its channel; a connect or disconnect with the other events of its
client; a gateway_expired with its gateway. Events of one key are POSTed one
at a time in stream order (`Lanes`), each only once the one before it was
answered 2xx or dead-lettered; events of different keys go out concurrently,
so one slow channel holds back only itself. Nothing orders two keys: a
client's disconnect may arrive before the unsubscribes of its channels.

`Lanes` holds the events fetched and not yet done, one FIFO per key sorted by
stream sequence (a redelivery lands in its place, a copy of an event already
held is dropped), and says when a key needs a worker: `add` answers True for
the first event of an idle key; the worker then `take`s events until `take`
answers None, which leaves the key idle again.
"""

from __future__ import annotations

import bisect
import zlib
from collections.abc import Iterator
from typing import Generic, TypeVar

from meshcast.bus.subjects import CHANNEL_EVENT_KINDS
from meshcast.proto.events_pb2 import Event

T = TypeVar("T")


def ordering_key(event: Event) -> str:
    """The key whose events are delivered in stream order (see the module docstring)."""
    kind = event.WhichOneof("kind") or ""
    body = getattr(event, kind) if kind else None
    if kind in CHANNEL_EVENT_KINDS:
        return "channel:" + str(getattr(body, "channel", ""))
    client = str(getattr(body, "client", "")) if body is not None else ""
    if client:
        return "client:" + client
    return "gateway:" + event.gateway


def shard_of(key: str, shards: int) -> int:
    """The shard (0 .. shards-1) that delivers `key`'s events: the same in every process."""
    return zlib.crc32(key.encode()) % shards


def retry_delay(failures: int, *, initial: float, cap: float, jitter: float = 1.0) -> float:
    """Seconds to wait after the `failures`-th failed POST of an event: `initial`
    doubled per earlier failure, at most `cap`, then scaled by `jitter` in [0.5, 1]
    (the caller draws it; 1 means none)."""
    if failures < 1:
        raise ValueError("failures counts from 1")
    exponent = min(failures - 1, 64)  # 2**64 times any sane initial is past any cap
    return min(cap, initial * 2.0**exponent) * min(max(jitter, 0.5), 1.0)


class Lanes(Generic[T]):
    """Per-key queues of held items in sequence order, at most one in progress per key."""

    def __init__(self) -> None:
        self._queues: dict[str, list[tuple[int, T]]] = {}
        self._current: dict[str, tuple[int, T]] = {}
        self._busy: set[str] = set()

    def __len__(self) -> int:
        return sum(len(queue) for queue in self._queues.values()) + len(self._current)

    def add(self, key: str, seq: int, item: T) -> bool:
        """Hold `item` (stream sequence `seq`) for `key`; True when `key` needs a worker
        (it was idle). A `seq` already held for `key` is not held twice."""
        current = self._current.get(key)
        queue = self._queues.setdefault(key, [])
        if (current is not None and current[0] == seq) or self._holds(queue, seq):
            return False
        bisect.insort(queue, (seq, item), key=lambda entry: entry[0])
        if key in self._busy:
            return False
        self._busy.add(key)
        return True

    def take(self, key: str) -> tuple[int, T] | None:
        """The next item of `key` for its worker (the previous one is done), or None:
        the key is idle, and its next `add` answers True again."""
        self._current.pop(key, None)
        queue = self._queues.get(key)
        if not queue:
            self._queues.pop(key, None)
            self._busy.discard(key)
            return None
        entry = queue.pop(0)
        self._current[key] = entry
        return entry

    def held(self) -> Iterator[T]:
        """Every item held: queued or in progress."""
        for _, item in self._current.values():
            yield item
        for queue in self._queues.values():
            for _, item in queue:
                yield item

    def busy(self) -> frozenset[str]:
        return frozenset(self._busy)

    @staticmethod
    def _holds(queue: list[tuple[int, T]], seq: int) -> bool:
        at = bisect.bisect_left(queue, seq, key=lambda entry: entry[0])
        return at < len(queue) and queue[at][0] == seq
