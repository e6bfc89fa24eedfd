"""Unmodified centrifuge-python SDK clients, recording what they receive."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from centrifuge import (
    Client,
    ClientEventHandler,
    ConnectingContext,
    DisconnectedContext,
    PublicationContext,
    SubscriptionEventHandler,
)

from meshcast.devtools.tokens import connection_token
from meshcast.testing import timeout, within

from .conftest import SECRET

WARM_UP = {"warm_up": True}


def _is_warm_up(data: Any) -> bool:
    if isinstance(data, bytes):
        try:
            data = json.loads(data)
        except ValueError:
            return False
    return bool(data == WARM_UP)


class Recorder(SubscriptionEventHandler):
    """A subscription's publications, in order; warm-up probes are not among them."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[Any] = asyncio.Queue()
        self.warmed_up = asyncio.Event()

    async def on_publication(self, ctx: PublicationContext) -> None:
        if _is_warm_up(ctx.pub.data):
            self.warmed_up.set()
            return
        await self.received.put(ctx.pub.data)

    async def next(self, seconds: float = 5.0) -> Any:
        return await within(self.received.get(), seconds)


class ConnectionEvents(ClientEventHandler):
    def __init__(self) -> None:
        self.codes: list[int] = []
        self._changed = asyncio.Event()

    async def on_connecting(self, ctx: ConnectingContext) -> None:
        self._record(ctx.code)

    async def on_disconnected(self, ctx: DisconnectedContext) -> None:
        self._record(ctx.code)

    def _record(self, code: int) -> None:
        self.codes.append(code)
        self._changed.set()

    async def wait_for_code(self, code: int, seconds: float = 5.0) -> None:
        async def seen() -> None:
            while code not in self.codes:
                self._changed.clear()
                await self._changed.wait()

        await within(seen(), seconds)


async def warm_up(publisher: Client, channel: str, recorder: Recorder, protobuf: bool = False) -> None:
    """Publish probes until the subscriber sees one: a new subscription's interest
    reaches the other NATS nodes over routes a moment after the subscribe reply.
    The recorder drops every probe, however late, so none is taken for data."""

    async def probe() -> None:
        while not recorder.warmed_up.is_set():
            await publisher.publish(channel, payload(protobuf, WARM_UP))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(recorder.warmed_up.wait(), timeout(0.2))

    await within(probe(), 10)


def sdk_client(url: str, user: str, *, protobuf: bool = False, events: ClientEventHandler | None = None) -> Client:
    return Client(
        url,
        token=connection_token(SECRET, user),
        use_protobuf=protobuf,
        events=events,
        max_reconnect_delay=0.5,
    )


def payload(protobuf: bool, value: dict[str, Any]) -> Any:
    """The SDK sends JSON values as JSON, protobuf payloads as bytes."""
    return json.dumps(value).encode() if protobuf else value


def decoded(protobuf: bool, data: Any) -> Any:
    return json.loads(data) if protobuf else data


async def connected(*clients: Client) -> None:
    """Connect each client and wait for its connect reply."""
    for client in clients:
        await within(client.connect())
        await within(client.ready())


async def subscribed(client: Client, channel: str) -> Recorder:
    """A subscription of `client` to `channel` whose subscribe reply came (the SDK's
    subscribe() only starts it: a publish from elsewhere must wait for the reply)."""
    recorder = Recorder()
    sub = client.new_subscription(channel, events=recorder)
    await within(sub.subscribe())
    await within(sub.ready())
    return recorder


async def disconnected(*clients: Client) -> None:
    for client in clients:
        await within(client.disconnect())
