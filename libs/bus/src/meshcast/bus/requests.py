"""Requests answered by several messages (chunked replies, JetStream batch gets)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.msg import Msg


async def request_many(
    nc: Client, subject: str, payload: bytes, *, last: Callable[[Msg], bool], wait: float
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
        await nc.publish(subject, payload, reply=inbox)
        await asyncio.wait_for(done.wait(), wait)
        return replies
    finally:
        await sub.unsubscribe()
