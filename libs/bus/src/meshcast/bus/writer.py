"""Storing messages in JetStream in order, a batch in flight at once.

`StreamWriter.write` publishes every message of a batch back to back, each
with its ``Nats-Msg-Id`` and its own reply subject under one inbox
subscription, then waits (bounded) for the acks. It answers how many of the
batch, from its start, are stored (a duplicate counts: the stream holds that
id already) and why the next one is not. The caller sends the rest again, in
order and with the same ids, so a retry stores nothing twice within the
stream's duplicate window, and what one connection writes is stored in the
order it was written (a retry of a lost message may land after ones that
followed it only if a stream leader changed between the two).

One `js.publish` at a time costs a round trip per message; concurrent
`js.publish` tasks cost a task each and leave the order to the scheduler.
Here a batch costs one round trip, no task, and the wire order is the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js.errors import APIError, NoStreamResponseError

# The status header of a reply nats-server sends when nothing listens (no stream captures the subject).
_STATUS = "Status"
_NO_RESPONDERS = "503"

MSG_ID = "Nats-Msg-Id"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message for a stream, with the id that makes its retries idempotent."""

    subject: str
    payload: bytes
    msg_id: str


@dataclass(frozen=True, slots=True)
class Written:
    """The outcome of one `write`: the first `stored` messages are in the stream;
    `error` is why the next one is not (None when all are)."""

    stored: int
    error: Exception | None = None


class _Batch:
    """The acks of one write: each message's outcome, and a future done with the last."""

    __slots__ = ("done", "outcomes", "remaining")

    def __init__(self, size: int, done: asyncio.Future[None]) -> None:
        self.outcomes: list[Exception | bool | None] = [False] * size  # False: no reply yet
        self.remaining = size
        self.done = done

    def settle(self, index: int, outcome: Exception | None) -> None:
        if self.outcomes[index] is not False:
            return
        self.outcomes[index] = outcome
        self.remaining -= 1
        if not self.remaining and not self.done.done():
            self.done.set_result(None)

    def written(self, ack_wait: float) -> Written:
        stored = 0
        for outcome in self.outcomes:
            if outcome is not None:
                break
            stored += 1
        if stored == len(self.outcomes):
            return Written(stored)
        error = self.outcomes[stored]
        if isinstance(error, Exception):
            return Written(stored, error)
        return Written(stored, TimeoutError(f"no ack within {ack_wait:g}s"))


class StreamWriter:
    """Writes batches to JetStream over `nc` (one inbox subscription for the acks)."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._inbox = ""
        self._sub: Subscription | None = None
        # Reply token -> (its batch, its place in the batch).
        self._waiting: dict[str, tuple[_Batch, int]] = {}
        self._next = 0

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_reply)

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None and not self._nc.is_closed:
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()
        self._waiting.clear()

    async def write(self, batch: Sequence[Outgoing], ack_wait: float) -> Written:
        """Publish `batch` in order and wait at most `ack_wait` seconds for its acks."""
        if self._sub is None:
            raise RuntimeError("StreamWriter.start was not called")
        acks = _Batch(len(batch), asyncio.get_running_loop().create_future())
        tokens: list[str] = []
        try:
            for index, item in enumerate(batch):
                self._next += 1
                token = str(self._next)
                self._waiting[token] = (acks, index)
                tokens.append(token)
                await self._nc.publish(
                    item.subject, item.payload, reply=f"{self._inbox}.{token}", headers={MSG_ID: item.msg_id}
                )
            if batch:
                await asyncio.wait((acks.done,), timeout=ack_wait)
        except NatsError as exc:  # the connection went away under the publishes
            return Written(acks.written(ack_wait).stored, exc)
        finally:
            for token in tokens:
                self._waiting.pop(token, None)
        return acks.written(ack_wait)

    async def _on_reply(self, msg: Msg) -> None:
        waiting = self._waiting.get(msg.subject.rpartition(".")[2])
        if waiting is not None:
            acks, index = waiting
            acks.settle(index, _outcome(msg))


def _outcome(msg: Msg) -> Exception | None:
    """None for an ack (a duplicate included), else the error the reply carries."""
    if msg.headers and msg.headers.get(_STATUS) == _NO_RESPONDERS:
        return NoStreamResponseError()
    data = msg.data
    if data.startswith(b'{"stream"') and b'"error"' not in data:
        return None  # the common case, without parsing it
    try:
        reply = json.loads(msg.data)
    except ValueError:
        return APIError(description="unreadable ack")
    if not isinstance(reply, dict):
        return APIError(description="unreadable ack")
    error = reply.get("error")
    if not isinstance(error, dict):
        return None
    try:
        APIError.from_error(error)  # raises the error's own class (503, 404, ...)
    except APIError as exc:
        return exc
    return APIError(description="unreadable ack")
