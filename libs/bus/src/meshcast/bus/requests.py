"""Requests answered by several messages (chunked replies, JetStream batch gets)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from typing import TypeVar

from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg

from meshcast.proto.presence_pb2 import QueryReply, QueryRequest
from meshcast.protocol import ErrorCode

from .envelope import trace_headers
from .subjects import Subjects

T = TypeVar("T")


async def request_many(
    nc: Client,
    subject: str,
    payload: bytes,
    *,
    last: Callable[[Msg], bool],
    wait: float,
    headers: dict[str, str] | None = None,
) -> list[Msg]:
    """Every reply to one request, up to and including the one `last` accepts.

    TimeoutError when the final reply does not come within `wait` seconds.
    """
    inbox = nc.new_inbox()
    replies: list[Msg] = []
    done = asyncio.Event()

    async def collect(msg: Msg) -> None:
        replies.append(msg)
        if last(msg):
            done.set()

    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(subject, payload, reply=inbox, headers=headers)
        await asyncio.wait_for(done.wait(), wait)
        return replies
    finally:
        await sub.unsubscribe()


# Room left in a reply for its headers, its envelope and the fields around the parts.
REPLY_OVERHEAD = 4096


def reply_limit(nc: Client, configured: int) -> int:
    """The most bytes of parts one reply may carry: `configured`, within the server's max_payload."""
    return max(1, min(configured, nc.max_payload) - REPLY_OVERHEAD)


def in_parts(items: Sequence[T], size: Callable[[T], int], limit: int) -> list[list[T]]:
    """`items` in order, in parts whose sizes add up to at most `limit` (at least one part).

    An item larger than `limit` on its own makes a part alone: the caller's
    publish then fails for it, loudly, instead of taking its neighbours along."""
    parts: list[list[T]] = [[]]
    used = 0
    for item in items:
        n = size(item)
        if parts[-1] and used + n > limit:
            parts.append([])
            used = 0
        parts[-1].append(item)
        used += n
    return parts


# A reply subject a responder accepts: an inbox (``_INBOX.`` or ``_INBOX_<user>.``
# and tokens), never a service subject, ``$JS.API.>`` or ``$KV.>``.
_INBOX_RE = re.compile(r"_INBOX(?:_[A-Za-z0-9_-]+)?(?:\.[A-Za-z0-9_-]+)+")
MAX_REPLY_SUBJECT = 256


def is_inbox(reply: str) -> bool:
    """Whether `reply` is a requester's inbox, so answering it cannot act as that requester.

    A responder publishes its answer with its own permissions (NATS'
    ``allow_responses`` lets it reach any reply subject, whatever its deny
    list): a requester that names ``$JS.API.STREAM.DELETE.<stream>`` as its
    reply would have the responder delete the stream. Every responder
    answers inboxes only."""
    return len(reply) <= MAX_REPLY_SUBJECT and _INBOX_RE.fullmatch(reply) is not None


async def presence_parts(
    nc: Client, subjects: Subjects, channel: str, *, stats_only: bool, wait: float
) -> list[QueryReply]:
    """Every part of the presence service's answer for `channel` (a large one comes in
    several); a part that does not decode stands as an internal error. NATS failures and
    a missing last part (TimeoutError) go up to the caller, which names them to its own."""
    parts: list[QueryReply] = []

    def last(msg: Msg) -> bool:
        part = QueryReply()
        try:
            part.ParseFromString(msg.data)
        except DecodeError:
            part.error.code = ErrorCode.INTERNAL
        parts.append(part)
        return not part.more or part.HasField("error")

    request = QueryRequest(channel=channel, stats_only=stats_only).SerializeToString()
    # The current trace, if any, goes with the query (the presence service's span joins it).
    headers = trace_headers() or None
    await request_many(nc, subjects.presence_query, request, last=last, wait=wait, headers=headers)
    return parts
