"""The ledger's checkpoint in the KV bucket MESHCAST_EVENTS_LEDGER.

A checkpoint is the serialized `LedgerState` in values of at most `chunk`
bytes (``chunk.<id>.<n>``) and then ``head``, which names them: a reader
that finds ``head`` finds a whole state, whoever wrote it. Instances of the
service write their own chunks and move ``head`` only forward (never to a
state older than the one it names), then delete their previous chunks; the
bucket's TTL takes what a crashed instance left behind. Any checkpoint is a
valid start: the ledger after it is a function of the stream from there on.
"""

from __future__ import annotations

import uuid

import structlog
from google.protobuf.message import DecodeError
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from meshcast.proto.events_ledger_pb2 import LedgerHead, LedgerState

log = structlog.get_logger(__name__)

HEAD = "head"
LOAD_ATTEMPTS = 3


class Checkpoints:
    def __init__(self, kv: KeyValue, chunk: int) -> None:
        self._kv = kv
        self._chunk = chunk
        self._mine: list[str] = []

    async def save(self, state: LedgerState) -> bool:
        """Write `state` and point ``head`` at it, unless ``head`` names a later one."""
        current = await self._head()
        if current is not None and current.seq > state.seq:
            return False
        data = state.SerializeToString()
        ident = uuid.uuid4().hex
        keys = [f"chunk.{ident}.{n}" for n in range(max(1, -(-len(data) // self._chunk)))]
        for n, key in enumerate(keys):
            await self._kv.put(key, data[n * self._chunk : (n + 1) * self._chunk])
        head = LedgerHead(seq=state.seq, id=ident, chunks=len(keys), size=len(data))
        await self._kv.put(HEAD, head.SerializeToString())
        previous, self._mine = self._mine, keys
        for key in previous:
            try:
                await self._kv.purge(key)
            except (NatsError, JetStreamError) as exc:  # the bucket's TTL takes it
                log.debug("old checkpoint chunk not purged", key=key, error=str(exc))
        return True

    async def load(self) -> LedgerState | None:
        """The state ``head`` names, or None when there is none (or none readable)."""
        for _ in range(LOAD_ATTEMPTS):
            head = await self._head()
            if head is None:
                return None
            try:
                parts = [(await self._kv.get(f"chunk.{head.id}.{n}")).value or b"" for n in range(head.chunks)]
            except KeyNotFoundError:
                continue  # replaced meanwhile: read the new head
            data = b"".join(parts)
            state = LedgerState()
            try:
                state.ParseFromString(data)
            except DecodeError:
                continue
            if len(data) == head.size and state.seq == head.seq:
                return state
        log.warning("no readable ledger checkpoint", attempts=LOAD_ATTEMPTS)
        return None

    async def _head(self) -> LedgerHead | None:
        try:
            entry = await self._kv.get(HEAD)
        except KeyNotFoundError:
            return None
        head = LedgerHead()
        try:
            head.ParseFromString(entry.value or b"")
        except DecodeError:
            return None
        return head
