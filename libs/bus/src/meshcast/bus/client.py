"""Connecting to NATS and publishing to channels: the one call a backend needs.

>>> nc = await connect("nats://127.0.0.1:4222", name="my-backend")
>>> await publish(nc, "chat:index", b'{"text": "hi"}')
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Sequence

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck

from meshcast.proto.bus_pb2 import Publisher

from .envelope import encode_publication, trace_headers
from .retry import through_election
from .subjects import Subjects

ErrorCallback = Callable[[Exception], Awaitable[None]]
Callback = Callable[[], Awaitable[None]]


async def connect(
    servers: str | Sequence[str],
    *,
    name: str,
    connect_timeout: float = 5.0,
    max_reconnect_attempts: int = -1,
    reconnect_time_wait: float = 0.5,
    randomize: bool = True,
    error_cb: ErrorCallback | None = None,
    disconnected_cb: Callback | None = None,
    reconnected_cb: Callback | None = None,
    closed_cb: Callback | None = None,
    inbox_prefix: str | None = None,
    user: str | None = None,
    password: str | None = None,
    token: str | None = None,
    user_credentials: str | None = None,
) -> Client:
    """A NATS connection that reconnects forever (by default) across `servers`.

    Credentials come in the URLs (``nats://user:password@host``) or as `user`
    and `password`, a `token`, or a `user_credentials` (``.creds``) file.

    `inbox_prefix` replaces nats-py's ``_INBOX`` in every inbox of the
    connection: request replies, JetStream publish acks, push consumers and KV
    watches. Where NATS grants each user only its own inboxes, pass the user's
    (``_INBOX_backend`` for user ``backend``, see ``meshcast.common.natsauth``).
    """
    if isinstance(servers, str):
        servers = [s.strip() for s in servers.split(",") if s.strip()]
    kwargs: dict[str, object] = {}
    if inbox_prefix is not None:
        kwargs["inbox_prefix"] = inbox_prefix
    credentials = {"user": user, "password": password, "token": token, "user_credentials": user_credentials}
    kwargs.update({key: value for key, value in credentials.items() if value is not None})
    if error_cb is not None:
        kwargs["error_cb"] = error_cb
    if disconnected_cb is not None:
        kwargs["disconnected_cb"] = disconnected_cb
    if reconnected_cb is not None:
        kwargs["reconnected_cb"] = reconnected_cb
    if closed_cb is not None:
        kwargs["closed_cb"] = closed_cb
    return await nats.connect(
        servers=list(servers),
        name=name,
        connect_timeout=connect_timeout,
        max_reconnect_attempts=max_reconnect_attempts,
        reconnect_time_wait=reconnect_time_wait,
        allow_reconnect=True,
        dont_randomize=not randomize,
        **kwargs,
    )


async def subscriptions_applied(nc: Client) -> None:
    """Return once the server has every subscription made so far on `nc`.

    nats-py 2.16's flush() can write its PING ahead of a SUB still queued
    for the socket, so one round trip does not prove the SUB arrived; the
    second PING goes out after it.
    """
    await nc.flush()
    await nc.flush()


async def close(nc: Client, wait: float) -> None:
    """Drain (flush what is buffered) when connected, else just close; bounded."""
    if nc.is_closed:
        return
    finish = nc.drain() if nc.is_connected else nc.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(finish, wait)


async def publish(
    nc: Client,
    channel: str,
    data: bytes,
    *,
    subjects: Subjects | None = None,
    publisher: Publisher | None = None,
    tags: dict[str, str] | None = None,
    history: bool = False,
    idempotency_key: str | None = None,
    ack_timeout: float = 5.0,
    deadline: float = 15.0,
) -> int:
    """Publish `data` to every subscriber of `channel` on every gateway.

    In a namespace with history pass ``history=True``: the publication goes
    into the namespace's stream, the call returns its offset once JetStream
    stored it, and a retry with the same `idempotency_key` within the
    duplicate window is stored once. While the stream elects a leader the
    call is retried with the same key (one is made when none is given) for
    up to `deadline` seconds, each try waiting at most `ack_timeout`.
    Otherwise it is a core NATS publish (returns 0).
    """
    subjects = subjects or Subjects()
    body = encode_publication(channel, data, publisher=publisher, tags=tags)
    headers = trace_headers()
    if not history:
        await nc.publish(subjects.live(channel), body, headers=headers or None)
        return 0
    ack = await store(
        nc.jetstream(),
        subjects.input(channel),
        body,
        headers=headers,
        msg_id=idempotency_key,
        deadline=deadline,
        ack_timeout=ack_timeout,
    )
    seq: int = ack.seq
    return seq


async def store(
    js: JetStreamContext,
    subject: str,
    body: bytes,
    *,
    headers: dict[str, str] | None,
    msg_id: str | None,
    deadline: float,
    ack_timeout: float,
) -> PubAck:
    """Store `body` in the stream capturing `subject`, riding through a leader
    election: every try carries the same ``Nats-Msg-Id``, so it is stored once."""
    headers = {**(headers or {}), "Nats-Msg-Id": msg_id or uuid.uuid4().hex}

    def attempt(timeout: float) -> Awaitable[PubAck]:
        return js.publish(subject, body, timeout=timeout, headers=headers)

    return await through_election(attempt, deadline=deadline, attempt_timeout=ack_timeout, what="publish")
