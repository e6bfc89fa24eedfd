"""The history API: position, recover, history and remove, over a `HistoryStore`."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

from meshcast.bus import Subjects, namespace_of
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

from .recovery import RecoveryFacts, recovered
from .store import Batch, HistoryStore, StreamState


class HistoryFailure(Exception):
    """A request the service answers with an error code."""

    def __init__(self, code: ErrorCode, message: str | None = None) -> None:
        super().__init__(message or code.message)
        self.code = code
        self.message = message or code.message

    def as_proto(self) -> HistoryError:
        return HistoryError(code=int(self.code), message=self.message)


@dataclass(frozen=True, slots=True)
class _Target:
    stream: str
    subject: str
    options: ChannelOptions


class HistoryService:
    def __init__(self, store: HistoryStore, channels: ChannelsConfig, subjects: Subjects, max_limit: int) -> None:
        self._store = store
        self._channels = channels
        self._subjects = subjects
        self._max_limit = max_limit

    def _target(self, channel: str) -> _Target:
        options = self._channels.options_for(channel)
        if options is None:
            raise HistoryFailure(ErrorCode.UNKNOWN_CHANNEL)
        if not options.history_size:
            raise HistoryFailure(ErrorCode.NOT_AVAILABLE, "no history in this namespace")
        ns = namespace_of(channel, self._channels.namespace_separator)
        return _Target(self._subjects.stream_name(ns), self._subjects.input(channel), options)

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

    async def _read_after(self, target: _Target, epoch: str, offset: int, limit: int) -> tuple[Batch, bool]:
        """Messages after `offset` (at most `limit`) and whether they are all there is."""
        before = await self._store.state(target.stream)
        batch = await self._store.range(target.stream, target.subject, offset, limit)
        stored = await self._store.has(target.stream, offset, target.subject)
        after = await self._store.state(target.stream)
        facts = RecoveryFacts(
            request_epoch=epoch,
            offset=offset,
            epoch_before=before.epoch,
            epoch_after=after.epoch,
            first_seq_after=after.first_seq,
            offset_still_stored=stored,
            missed=len(batch.messages) + batch.pending,
            history_size=target.options.history_size,
            max_publications=max(limit - 1, 0),
        )
        return batch, recovered(facts)

    async def recover(self, request: RecoverRequest) -> RecoverReply:
        target = self._target(request.channel)
        state = await self._store.state(target.stream)
        if request.epoch == state.epoch:
            limit = request.max_publications + 1
            batch, ok = await self._read_after(target, request.epoch, request.offset, limit)
            if ok:
                pubs = _stored(batch)
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
        top, _ = await self._position(target, state)
        if request.has_since and request.since_epoch != state.epoch:
            raise HistoryFailure(ErrorCode.UNRECOVERABLE_POSITION)
        limit = self._max_limit if request.limit < 0 else min(request.limit, self._max_limit)
        reply = HistoryReply(epoch=state.epoch, offset=top)
        if limit == 0:
            return reply
        if request.reverse:
            everything = await self._store.range(target.stream, target.subject, 0, target.options.history_size)
            pubs = _stored(everything)
            if request.has_since:
                pubs = [p for p in pubs if p.offset < request.since_offset]
            reply.publications.extend(reversed(pubs[-limit:]))
            return reply
        since = request.since_offset if request.has_since else 0
        if request.has_since:
            batch, ok = await self._read_after(target, state.epoch, since, target.options.history_size + 1)
            if not ok:
                raise HistoryFailure(ErrorCode.UNRECOVERABLE_POSITION)
            batch = Batch(batch.messages[:limit], 0)
        else:
            batch = await self._store.range(target.stream, target.subject, 0, limit)
        reply.publications.extend(_stored(batch))
        return reply

    async def remove(self, request: RemoveRequest) -> RemoveReply:
        target = self._target(request.channel)
        await self._store.purge(target.stream, target.subject)
        return RemoveReply()


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
