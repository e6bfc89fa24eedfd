"""Reading a history stream: positions, ranges of one channel, the stream's state.

Reads use JetStream direct gets (``allow_direct``), batched by subject, so a
query is one or two round trips and creates no consumer. Each read waits at
most `attempt_timeout`; a read JetStream could not answer then (a timeout,
no responders, 503, a stream without a leader) is `StoreUnavailable`, which
the service retries (`retry`), while a stream that does not exist is
`StreamMissing` at once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError, ServiceUnavailableError

from meshcast.bus.requests import request_many


class StoreError(Exception):
    """JetStream did not answer as expected (timeout, missing stream)."""


class StreamMissing(StoreError, LookupError):
    pass


class StoreUnavailable(StoreError, TimeoutError):
    """JetStream did not answer now (no leader, an election, a timeout): worth asking again."""


# Direct-get statuses of a replica that cannot answer now: 408 timeout, 503 no leader or responders.
_TRANSIENT_STATUSES = frozenset({"408", "503"})
# JetStream API errors of a cluster without a leader: 10008 cluster temporarily unavailable, 10074
# no suitable peers, 10023 insufficient resources (an election in progress).
_TRANSIENT_API_ERRORS = frozenset({10005, 10008, 10023, 10074})
_STREAM_NOT_FOUND = 10059


@dataclass(frozen=True, slots=True)
class StreamState:
    epoch: str
    first_seq: int
    last_seq: int


@dataclass(frozen=True, slots=True)
class Stored:
    seq: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Batch:
    messages: list[Stored]
    # Messages of the subject after the last one returned (0: none left).
    pending: int


def epoch_of(stream: str, created: Any) -> str:
    """A stream incarnation's identity: its name and creation time, hashed short."""
    return hashlib.sha256(f"{stream}|{created}".encode()).hexdigest()[:16]


def _api_failure(what: str, exc: APIError) -> StoreError:
    if isinstance(exc, ServiceUnavailableError) or exc.err_code in _TRANSIENT_API_ERRORS:
        return StoreUnavailable(f"{what}: {exc.description or exc.code}")
    return StoreError(f"{what}: {exc.description or exc.code}")


class HistoryStore:
    def __init__(self, nc: Nats, js: JetStreamContext, timeout: float) -> None:
        """`timeout` bounds one attempt at one read; `js` should wait as long."""
        self._nc = nc
        self._js = js
        self._timeout = timeout

    async def state(self, stream: str) -> StreamState:
        try:
            info = await self._js.stream_info(stream)
        except NotFoundError as exc:
            raise StreamMissing(stream) from exc
        except (TimeoutError, NoRespondersError) as exc:
            raise StoreUnavailable(f"stream info: {type(exc).__name__}") from exc
        except APIError as exc:
            raise _api_failure("stream info", exc) from exc
        state = info.state
        return StreamState(epoch_of(stream, info.created), state.first_seq, state.last_seq)

    async def last_seq(self, stream: str, subject: str) -> int:
        """The sequence of the subject's newest message; 0 when it has none.

        Asked of the stream's leader, never of a replica: a direct get may be
        answered by a replica still catching up (after a partition heals it
        serves a stale copy), and this is the figure the service checks the
        replicas' answers against."""
        try:
            msg = await self._js.get_last_msg(stream, subject)
        except NotFoundError as exc:
            if exc.err_code == _STREAM_NOT_FOUND:
                raise StreamMissing(stream) from exc
            return 0  # no message on the subject
        except (TimeoutError, NoRespondersError, NoStreamResponseError) as exc:
            raise StoreUnavailable(f"last message: {type(exc).__name__}") from exc
        except APIError as exc:
            raise _api_failure("last message", exc) from exc
        return int(msg.seq or 0)

    async def has(self, stream: str, seq: int, subject: str) -> bool:
        """Whether message `seq` is still stored, on `subject`."""
        if seq <= 0:
            return False
        msg = await self._direct(stream, {"seq": seq})
        return msg is not None and msg.headers is not None and msg.headers.get("Nats-Subject") == subject

    async def range(self, stream: str, subject: str, after: int, limit: int) -> Batch:
        """Up to `limit` messages of `subject` with sequence > `after`, oldest first."""
        if limit <= 0:
            return Batch([], 0)
        request = {"seq": after + 1, "next_by_subj": subject, "batch": limit}
        try:
            # The batch ends with a status message (204 end of batch, 404 nothing).
            replies = await request_many(
                self._nc,
                self._api(stream),
                json.dumps(request).encode(),
                last=lambda msg: "Status" in (msg.headers or {}),
                wait=self._timeout,
            )
        except TimeoutError as exc:
            raise StoreUnavailable("direct get batch timed out") from exc
        messages: list[Stored] = []
        pending = 0
        for msg in replies:
            headers = msg.headers or {}
            status = headers.get("Status")
            if status is None:
                messages.append(Stored(int(headers["Nats-Sequence"]), msg.data))
                pending = int(headers.get("Nats-Num-Pending", "0"))
            elif status not in ("204", "404"):
                raise _status_failure(status)
        return Batch(messages, pending if messages else 0)

    async def remove(self, stream: str, subject: str, marker: str) -> int:
        """Remove `subject`'s history: store a marker on `marker`, then purge the
        subject's messages before it (see `recovery`). The marker's sequence."""
        try:
            ack = await self._js.publish(marker, b"", timeout=self._timeout, stream=stream)
            await self._js.purge_stream(stream, subject=subject, seq=ack.seq)
        except NotFoundError as exc:
            raise StreamMissing(stream) from exc
        except (TimeoutError, NoRespondersError, NoStreamResponseError) as exc:
            raise StoreUnavailable(f"remove: {type(exc).__name__}") from exc
        except APIError as exc:
            raise _api_failure("remove", exc) from exc
        return ack.seq

    def _api(self, stream: str) -> str:
        return f"$JS.API.DIRECT.GET.{stream}"

    async def _direct(self, stream: str, request: dict[str, Any]) -> Msg | None:
        try:
            msg = await self._nc.request(self._api(stream), json.dumps(request).encode(), timeout=self._timeout)
        except NoRespondersError as exc:
            # No replica serves direct gets now (an election); a missing stream is found by `state`.
            raise StoreUnavailable("direct get: no responders") from exc
        except TimeoutError as exc:
            raise StoreUnavailable("direct get timed out") from exc
        status = (msg.headers or {}).get("Status")
        if status == "404":
            return None
        if status is not None:
            raise _status_failure(status)
        return msg


def _status_failure(status: str) -> StoreError:
    if status in _TRANSIENT_STATUSES:
        return StoreUnavailable(f"direct get status {status}")
    return StoreError(f"direct get status {status}")
