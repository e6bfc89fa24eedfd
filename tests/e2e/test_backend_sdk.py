"""meshcast.backend against real processes: every handler and call, as the unmodified
centrifuge-python SDK meets them through a gateway; replicas sharing work; a durable
consumer catching up; NATS permissions refusing, named."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from centrifuge import CentrifugeError, Client, ReplyError, SubscriptionEventHandler, UnsubscribedContext

from meshcast.backend import (
    Backend,
    Connect,
    ConnectRequest,
    Disconnect,
    LifecycleEvent,
    PermissionDenied,
    Publish,
    PublishRequest,
    Refresh,
    RefreshRequest,
    Reject,
    RPCRequest,
    Subscribe,
    SubscribeRequest,
)
from meshcast.common.natsauth import API, PRESENCE
from meshcast.testing import timeout, wait_until_async, within

from .backendstack import BackendStack, backend_stack
from .sdk import ConnectionEvents, connected, disconnected, sdk_client, subscribed

pytestmark = pytest.mark.e2e

NAMESPACES = """
namespaces:
  - name: chat
    history_size: 10
    history_ttl: 300
    presence: true
    proxy_subscribe: true
    proxy_publish: true
  - name: room
    presence: true
    allow_subscribe: true
    allow_publish: true
default:
  allow_subscribe: true
  allow_publish: true
"""
GATEWAY_ENV = {
    "MESHCAST_PROXY_CONNECT": "true",
    "MESHCAST_PROXY_REFRESH": "true",
    # Every proxied connection below expires within the margin: refreshed at the next sweep.
    "MESHCAST_PROXY_REFRESH_MARGIN": "3600",
    "MESHCAST_PROXY_TIMEOUT": "3",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendStack]:
    with backend_stack(tmp_path_factory.mktemp("backend-sdk"), NAMESPACES, GATEWAY_ENV) as started:
        yield started


def backend(stack: BackendStack, name: str, user: str = "backend") -> Backend:
    return Backend(
        stack.url(user), name=name, history_namespaces=("chat",), request_timeout=timeout(2), drain_timeout=timeout(5)
    )


class Unsubscribed(SubscriptionEventHandler):
    def __init__(self) -> None:
        self.codes: asyncio.Queue[int] = asyncio.Queue()

    async def on_unsubscribed(self, ctx: UnsubscribedContext) -> None:
        await self.codes.put(ctx.code)


@pytest.fixture
async def chat(stack: BackendStack) -> AsyncIterator[tuple[Backend, dict[str, list[object]]]]:
    """A backend with every decision handler, recording what it was asked."""
    app = backend(stack, "sdk-chat")
    seen: dict[str, list[object]] = {"connect": [], "refresh": [], "subscribe": [], "publish": []}

    @app.on_connect
    async def connect(request: ConnectRequest) -> Connect:
        seen["connect"].append(request)
        if request.headers.get("Cookie") != "session=carol":
            raise Reject(101, "who are you")
        return Connect(user="carol", expire_at=int(time.time()) + 600, info=b'{"name": "Carol"}')

    @app.on_refresh
    async def refresh(request: RefreshRequest) -> Refresh:
        seen["refresh"].append(request)
        return Refresh(expire_at=int(time.time()) + 600)

    @app.on_subscribe
    async def subscribe(request: SubscribeRequest) -> Subscribe:
        seen["subscribe"].append(request)
        if request.channel == "chat:secret":
            raise Reject(103, "members only")
        return Subscribe(info=json.dumps({"member": request.user}).encode())

    @app.on_publish
    async def publish(request: PublishRequest) -> Publish | None:
        seen["publish"].append(request)
        text = str(request.json()["text"])
        if "spam" in text:
            raise Reject(103, "no spam")
        if "kick me" in text:
            raise Disconnect(4001, "kicked")
        if "slow" in text:
            await asyncio.sleep(10)
        if "crash" in text:
            raise RuntimeError("a bug")
        return Publish(json.dumps({"text": text.replace("darn", "****")}).encode()) if "darn" in text else None

    @app.rpc("echo")
    async def echo(request: RPCRequest) -> bytes:
        return json.dumps({"user": request.user, "got": request.json()}).encode()

    await within(app.start(), 10)
    try:
        yield app, seen
    finally:
        await within(app.stop(), 15)


async def test_every_decision_handler_answers_the_unmodified_sdk(
    stack: BackendStack, chat: tuple[Backend, dict[str, list[object]]]
) -> None:
    app, seen = chat
    carol = Client(stack.ws, headers={"Cookie": "session=carol"})
    stranger = Client(stack.ws, headers={"Cookie": "session=nobody"}, max_reconnect_delay=0.5)
    await connected(carol)
    try:
        echoed = await within(carol.rpc("echo", {"n": 1}))
        assert echoed.data == {"user": "carol", "got": {"n": 1}}
        await wait_until_async(lambda: bool(seen["refresh"]), 10, "a refresh request")
        assert isinstance(seen["refresh"][0], RefreshRequest)
        assert seen["refresh"][0].user == "carol"

        room = await subscribed(carol, "chat:main")
        [asked] = seen["subscribe"]
        assert isinstance(asked, SubscribeRequest)
        assert (asked.user, asked.channel) == ("carol", "chat:main")
        refused = Unsubscribed()
        await carol.new_subscription("chat:secret", events=refused).subscribe()
        assert await within(refused.codes.get()) == 103

        await within(carol.publish("chat:main", {"text": "oh darn"}))
        assert await room.next() == {"text": "oh ****"}
        await within(carol.publish("chat:main", {"text": "fine"}))
        assert await room.next() == {"text": "fine"}
        for text, code, temporary in (("spam!", 103, False), ("slow", 100, True), ("crash", 100, True)):
            with pytest.raises(ReplyError) as error:
                await within(carol.publish("chat:main", {"text": text}), 10)
            assert (error.value.code, error.value.temporary) == (code, temporary), text
        history = await within(app.history("chat:main"))
        assert [json.loads(p.data) for p in history.publications] == [{"text": "oh ****"}, {"text": "fine"}]

        events = ConnectionEvents()
        kicked = Client(stack.ws, headers={"Cookie": "session=carol"}, events=events)
        await connected(kicked)
        with pytest.raises(CentrifugeError):  # the publish's connection closes under it
            await within(kicked.publish("chat:main", {"text": "kick me"}))
        await events.wait_for_code(4001)
        await kicked.disconnect()

        await stranger.connect()
        await wait_until_async(lambda: len(seen["connect"]) >= 3, 10, "the stranger's connect")
        assert isinstance(seen["connect"][-1], ConnectRequest)
    finally:
        await disconnected(carol, stranger)


async def test_calls_publish_broadcast_presence_history_subscribe_and_disconnect(stack: BackendStack) -> None:
    app = backend(stack, "sdk-calls")
    await within(app.start(), 10)
    events = ConnectionEvents()
    dave = sdk_client(stack.ws, "dave", events=events)
    await connected(dave)
    try:
        room, lobby = await subscribed(dave, "room:a"), await subscribed(dave, "lobby")
        assert await within(app.publish("room:a", b'{"n": 1}')) == 0
        assert await room.next() == {"n": 1}
        results = await within(app.broadcast(["room:a", "lobby"], b'{"n": 2}'))
        assert results == [0, 0]
        assert await room.next() == {"n": 2}
        assert await lobby.next() == {"n": 2}
        first = await within(app.publish("chat:calls", b'{"n": 3}', idempotency_key="k"))
        assert first > 0
        assert await within(app.publish("chat:calls", b'{"n": 3}', idempotency_key="k")) == first
        page = await within(app.history("chat:calls", limit=10))
        assert [(p.offset, p.data) for p in page.publications] == [(first, b'{"n": 3}')]

        members = await within(app.presence("room:a"))
        assert [m.user for m in members.values()] == ["dave"]
        assert (await within(app.presence_stats("room:a"))).num_users == 1

        await within(app.subscribe_user("dave", "room:server-side"))
        await wait_until_async(
            lambda: _has_member(app, "room:server-side", "dave"), 10, "dave subscribed server-side", every=0.2
        )
        await within(app.unsubscribe_user("dave", "room:server-side"))
        await wait_until_async(
            lambda: _no_member(app, "room:server-side"), 10, "dave unsubscribed server-side", every=0.2
        )
        await within(app.disconnect("dave", code=4500, reason="bye"))
        await events.wait_for_code(4500)
    finally:
        await disconnected(dave)
        await within(app.stop(), 15)


async def _has_member(app: Backend, channel: str, user: str) -> bool:
    return user in {m.user for m in (await app.presence(channel)).values()}


async def _no_member(app: Backend, channel: str) -> bool:
    return not await app.presence(channel)


async def test_two_replicas_share_the_rpc_work_in_one_queue_group(stack: BackendStack) -> None:
    answered: dict[str, int] = {"one": 0, "two": 0}

    def replica(me: str) -> Backend:
        app = backend(stack, "sdk-shared")

        @app.rpc("whoami")
        async def whoami(request: RPCRequest) -> bytes:
            answered[me] += 1
            return me.encode()

        return app

    replicas = [replica(me) for me in answered]
    for app in replicas:
        await within(app.start(), 10)
    erin = sdk_client(stack.ws, "erin")
    await connected(erin)
    try:
        for _ in range(40):
            await within(erin.rpc("whoami", {}))
        assert sum(answered.values()) == 40, answered
        assert min(answered.values()) > 0, answered
    finally:
        await disconnected(erin)
        for app in replicas:
            await within(app.stop(), 15)


async def test_a_durable_consumer_reads_the_events_it_missed_while_down(stack: BackendStack) -> None:
    seen: asyncio.Queue[LifecycleEvent] = asyncio.Queue()

    def make() -> Backend:
        app = backend(stack, "sdk-durable")

        @app.on_event("connect", "disconnect")
        async def on_event(event: LifecycleEvent) -> None:
            await seen.put(event)

        return app

    first = make()
    await within(first.start(), 10)  # creates the consumer, from new events on
    await within(first.stop(), 15)

    frank = sdk_client(stack.ws, "frank")
    await connected(frank)
    await disconnected(frank)

    second = make()
    await within(second.start(), 10)
    try:
        told = [await within(seen.get(), 10) for _ in range(2)]
        assert [(e.kind, e.user) for e in told] == [("connect", "frank"), ("disconnect", "frank")]
        assert told[0].client == told[1].client
        assert told[0].sequence < told[1].sequence
    finally:
        await within(second.stop(), 15)


async def test_nats_permission_refusals_name_the_subject(stack: BackendStack) -> None:
    # The `api` NATS user may not answer rpc calls.
    answering = backend(stack, "sdk-denied", user=API)

    @answering.rpc("who")
    async def who(request: RPCRequest) -> bytes:
        return b""

    with pytest.raises(PermissionDenied) as refused:
        await within(answering.start(), 10)
    assert refused.value.subject == "meshcast.rpc.who"
    assert refused.value.operation == "subscribe"

    # The `presence` NATS user may not publish to channels.
    publishing = backend(stack, "sdk-denied-publish", user=PRESENCE)
    await within(publishing.start(), 10)
    try:
        with pytest.raises(PermissionDenied, match=r"publish to 'meshcast\.live\.room\.room~3Ax'"):
            await within(publishing.publish("room:x", b"{}"))
    finally:
        await within(publishing.stop(), 15)

    # Nor may the `api` user read the events stream.
    reading = backend(stack, "sdk-denied-events", user=API)

    @reading.on_event("disconnect")
    async def on_disconnect(event: LifecycleEvent) -> None:
        return None

    with pytest.raises(PermissionDenied, match=r"\$JS\.API\.consumer"):
        await within(reading.start(), 10)
