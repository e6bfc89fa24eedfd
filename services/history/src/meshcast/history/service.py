"""The history API: position, recover, history and remove, over a `HistoryStore`."""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from google.protobuf.message import Message

from meshcast.bus import Subjects, namespace_of
from meshcast.bus.requests import in_parts
from meshcast.common.namespaces import ChannelOptions, ChannelsConfig
from meshcast.proto.bus_pb2 import Publication
from meshcast.proto.history_pb2 import (
    HistoryError,
    HistoryReply,
    HistoryRequest,
    PositionReply,
    PositionRequest,
    RecoverReply,
    RecoverRequest,
    RemoveReply,
    RemoveRequest,
    StoredPublication,
)
from meshcast.protocol import ErrorCode

from .recovery import RecoveryFacts, known_position, recovered
from .store import Batch, HistoryStore, StoreUnavailable, StreamState

log = structlog.get_logger(__name__)


class HistoryFailure(Exception):
    """A request the service answers with an error code."""

    def __init__(self, code: ErrorCode, message: str | None = None) -> None:
        super().__init__(message or code.message)
        self.code = code
        self.message = message or code.message

    def as_proto(self) -> HistoryError:
        return HistoryError(code=int(self.code), message=self.message)


# Bytes of a reply's framing around each publication it carries.
PUBLICATION_OVERHEAD = 8


@dataclass(frozen=True, slots=True)
class _Target:
    stream: str
    subject: str
    # Where the channel's removal markers go (see `recovery`).
    marker: str
    options: ChannelOptions


@dataclass(frozen=True, slots=True)
class _After:
    """A read of a channel after a position: the messages, whether they are complete, and
    whether the message at the position is still the channel's."""

    batch: Batch
    complete: bool
    offset_stored: bool


class HistoryService:
    """Answers fit in one NATS message of `max_reply_bytes`: a recovery whose missed
    publications do not fit is not recovered (never a partial set, as when more than
    `recovery_max_publications` were missed); a `history` answer holds the oldest (or,
    reversed, the newest) publications that fit, and the client pages on from the
    last one it got with `since`."""

    def __init__(
        self,
        store: HistoryStore,
        channels: ChannelsConfig,
        subjects: Subjects,
        max_limit: int,
        max_reply_bytes: int = 1 << 20,
    ) -> None:
        self._store = store
        self._channels = channels
        self._subjects = subjects
        self._max_limit = max_limit
        self._max_reply_bytes = max_reply_bytes

    def _target(self, channel: str) -> _Target:
        options = self._channels.options_for(channel)
        if options is None:
            raise HistoryFailure(ErrorCode.UNKNOWN_CHANNEL)
        if not options.history_size:
            raise HistoryFailure(ErrorCode.NOT_AVAILABLE, "no history in this namespace")
        ns = namespace_of(channel, self._channels.namespace_separator)
        return _Target(
            self._subjects.stream_name(ns), self._subjects.input(channel), self._subjects.removal(channel), options
        )

    async def _position(self, target: _Target, state: StreamState) -> tuple[int, int]:
        """Where a new subscriber stands, and the channel's newest offset.

        The position is the channel's newest offset, or the stream's when the
        channel holds nothing, so that a later recovery from there is still
        decidable (see `recovery`)."""
        last = await self._store.last_seq(target.stream, target.subject)
        return last or state.last_seq, last

    async def position(self, request: PositionRequest) -> PositionReply:
        target = self._target(request.channel)
        before = await self._store.state(target.stream)
        offset, last = await self._position(target, before)
        after = await self._store.state(target.stream)
        if after.epoch != before.epoch:
            raise HistoryFailure(ErrorCode.INTERNAL, "stream recreated during read")
        return PositionReply(epoch=before.epoch, offset=offset, channel_offset=last)

    async def _first_offset(self, target: _Target) -> int:
        """The offset of the channel's first publication of the epoch, if still stored (see `_first_of`)."""
        return _first_of(await self._store.range(target.stream, target.subject, 0, 1), target.options)

    async def _mark_first_after(self, target: _Target, read: _After, pubs: list[StoredPublication]) -> None:
        """Mark the channel's first publication among `pubs`, read after a position: when the
        message there is still the channel's, it came before them all (no read then)."""
        if pubs and not read.offset_stored:
            _mark_first(pubs, await self._first_offset(target))

    async def _read_after(self, target: _Target, before: StreamState, epoch: str, offset: int, limit: int) -> _After:
        """Messages after `offset` (at most `limit`) and whether they are all there is.

        `offset` is a known position of the stream as of `before` (checked by the
        caller, so no read ever asks for a sequence the stream cannot have)."""
        batch = await self._complete_range(target, offset, limit)
        stored = await self._store.has(target.stream, offset, target.subject)
        removed_at = await self._store.last_seq(target.stream, target.marker)
        after = await self._store.state(target.stream)
        facts = RecoveryFacts(
            request_epoch=epoch,
            offset=offset,
            epoch_before=before.epoch,
            epoch_after=after.epoch,
            last_seq_before=before.last_seq,
            first_seq_after=after.first_seq,
            removed_at=removed_at,
            offset_still_stored=stored,
            missed=len(batch.messages) + batch.pending,
            history_size=target.options.history_size,
            max_publications=max(limit - 1, 0),
        )
        return _After(batch, recovered(facts), stored)

    async def recover(self, request: RecoverRequest) -> RecoverReply:
        target = self._target(request.channel)
        state = await self._store.state(target.stream)
        if request.epoch == state.epoch and known_position(request.offset, state.last_seq):
            limit = request.max_publications + 1
            read = await self._read_after(target, state, request.epoch, request.offset, limit)
            ok = read.complete
            pubs = _stored(read.batch) if ok else []
            if ok and _size(pubs) > self._max_reply_bytes:
                log.info(
                    "recovery too large for one reply", channel=request.channel, missed=len(pubs), bytes=_size(pubs)
                )
                ok = False
            if ok:
                await self._mark_first_after(target, read, pubs)
                if pubs:
                    top = last = pubs[-1].offset
                else:
                    top = request.offset
                    last = await self._store.last_seq(target.stream, target.subject)
                return RecoverReply(
                    recovered=True, epoch=state.epoch, offset=top, publications=pubs, channel_offset=last
                )
        offset, last = await self._position(target, state)
        return RecoverReply(recovered=False, epoch=state.epoch, offset=offset, channel_offset=last)

    async def history(self, request: HistoryRequest) -> HistoryReply:
        target = self._target(request.channel)
        state = await self._store.state(target.stream)
        if request.has_since and not (
            request.since_epoch == state.epoch and known_position(request.since_offset, state.last_seq)
        ):
            raise HistoryFailure(ErrorCode.UNRECOVERABLE_POSITION)
        top, _ = await self._position(target, state)
        limit = self._max_limit if request.limit < 0 else min(request.limit, self._max_limit)
        reply = HistoryReply(epoch=state.epoch, offset=top)
        if limit == 0:
            return reply
        if request.reverse:
            newest = list(reversed(await self._newest(target, request, limit)))
            reply.publications.extend(self._fitting(request.channel, newest))
            return reply
        if request.has_since:
            size = target.options.history_size + 1
            read = await self._read_after(target, state, state.epoch, request.since_offset, size)
            if not read.complete:
                raise HistoryFailure(ErrorCode.UNRECOVERABLE_POSITION)
            pubs = _stored(Batch(read.batch.messages[:limit], 0))
            await self._mark_first_after(target, read, pubs)
        else:
            batch = await self._complete_range(target, 0, limit)
            pubs = _stored(batch)
            _mark_first(pubs, _first_of(batch, target.options))
        reply.publications.extend(self._fitting(request.channel, pubs))
        return reply

    async def _complete_range(self, target: _Target, after: int, limit: int) -> Batch:
        """Up to `limit` messages of the channel after `after`, from any replica, and
        proven complete against the stream leader.

        Direct gets may be answered by a replica that is behind (one catching up
        after a partition serves a stale copy, and would make a recovery look
        complete over a hole). The leader's newest offset for the channel is read
        first: an answer that ends before it with nothing pending came from a
        replica behind, and the read is tried again (StoreUnavailable), never
        taken as the truth. Messages newer than that offset may or may not be
        in the answer; they come on the live path."""
        newest = await self._store.last_seq(target.stream, target.subject)
        batch = await self._store.range(target.stream, target.subject, after, limit)
        reached = batch.messages[-1].seq if batch.messages else after
        if batch.pending == 0 and len(batch.messages) < limit and reached < newest:
            log.info("a replica behind the leader answered", stream=target.stream, reached=reached, newest=newest)
            raise StoreUnavailable(f"replica behind the leader: {reached} < {newest}")
        return batch

    def _fitting(self, channel: str, pubs: list[StoredPublication]) -> list[StoredPublication]:
        """The first of `pubs` that fit in one reply."""
        fit = in_parts(pubs, _size_of, self._max_reply_bytes)[0]
        if _size(fit) > self._max_reply_bytes:
            log.warning("publication larger than a reply", channel=channel, offset=fit[0].offset)
            return []
        if len(fit) < len(pubs):
            log.info("history answer cut to fit one reply", channel=channel, wanted=len(pubs), sent=len(fit))
        return fit

    async def _newest(self, target: _Target, request: HistoryRequest, limit: int) -> list[StoredPublication]:
        """The newest `limit` publications (before `since`, whose older neighbours a removal must not have taken)."""
        everything = await self._complete_range(target, 0, target.options.history_size)
        pubs = _stored(everything)
        _mark_first(pubs, _first_of(everything, target.options))
        if request.has_since:
            if request.since_offset < await self._store.last_seq(target.stream, target.marker):
                raise HistoryFailure(ErrorCode.UNRECOVERABLE_POSITION)
            pubs = [p for p in pubs if p.offset < request.since_offset]
        return pubs[-limit:]

    async def remove(self, request: RemoveRequest) -> RemoveReply:
        target = self._target(request.channel)
        marker = await self._store.remove(target.stream, target.subject, target.marker)
        log.info("history removed", channel=request.channel, removed_at=marker)
        return RemoveReply()


def _first_of(from_start: Batch, options: ChannelOptions) -> int:
    """The offset of the channel's first publication of the epoch, from a read of the channel
    from its start: its oldest stored one while it keeps fewer than `history_size` (none has
    been dropped by the size limit); 0 when it is gone or unknown. One that aged out or was
    removed leaves no trace, and the oldest kept then counts as first: the epoch it carries
    to the client is the stream's all the same. (JetStream's republish says the same of a
    live publication: no previous one on the channel's subject.)"""
    if from_start.messages and len(from_start.messages) + from_start.pending < options.history_size:
        return from_start.messages[0].seq
    return 0


def _mark_first(pubs: list[StoredPublication], first: int) -> None:
    for pub in pubs:
        if first and pub.offset == first:
            pub.first = True


def _size_of(pub: StoredPublication) -> int:
    return pub.ByteSize() + PUBLICATION_OVERHEAD


def _size(pubs: list[StoredPublication]) -> int:
    return sum(_size_of(p) for p in pubs)


def _stored(batch: Batch) -> list[StoredPublication]:
    out = []
    for msg in batch.messages:
        pub = Publication()
        pub.ParseFromString(msg.data)
        out.append(StoredPublication(offset=msg.seq, publication=pub))
    return out


def error_reply(reply_type: type[Message], failure: HistoryFailure) -> Message:
    reply = reply_type()
    reply.error.CopyFrom(failure.as_proto())  # type: ignore[attr-defined]
    return reply
