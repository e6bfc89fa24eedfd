"""Decisions delegated to a backend over NATS: cookie connects, refresh, subscribe and publish.

The backend here is what a user of Meshcast writes: a NATS responder speaking
meshcast.proxy.v1. Nothing of Meshcast's own is replaced.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg

from meshcast.bus import Subjects, connect
from meshcast.gateway.app import Gateway
from meshcast.proto import proxy_pb2 as proxy
from meshcast.testing import timeout, wait_until_async

from .harness import GatewayFactory, open_client

# How long the gateway waits for a backend's decision: generous on a busy
# machine, since every answered decision must fit in it.
PROXY_TIMEOUT = timeout(2)

NAMESPACES = """
namespaces:
  - name: chat
    allow_publish: true
  - name: gated
    proxy_subscribe: true
  - name: moderated
    proxy_publish: true
"""


class Backend:
    """A backend's decisions, as plain NATS responders."""

    def __init__(self, nc: Nats) -> None:
        self.nc = nc
        self.refreshes = 0
        self.connect_headers: dict[str, str] = {}
        self.first_expiry = 0

    async def start(self) -> None:
        subjects = Subjects()
        for method, handler in (
            ("connect", self.on_connect),
            ("refresh", self.on_refresh),
            ("subscribe", self.on_subscribe),
            ("publish", self.on_publish),
        ):
            await self.nc.subscribe(subjects.proxy(method), queue="backend", cb=handler)
        await self.nc.flush()

    async def on_connect(self, msg: Msg) -> None:
        request = proxy.ConnectRequest.FromString(msg.data)
        self.connect_headers = dict(request.headers)
        cookie = request.headers.get("Cookie", "")
        reply = proxy.ConnectReply()
        if "session=good" in cookie:
            self.first_expiry = int(time.time()) + 2
            reply.result.CopyFrom(
                proxy.ConnectResult(
                    user="cookie-user",
                    expire_at=self.first_expiry,
                    info=json.dumps({"via": "cookie"}).encode(),
                    channels=["chat:auto"],
                )
            )
        elif "session=slow" in cookie:
            return  # never answers
        elif "session=silent-refresh" in cookie:
            self.first_expiry = int(time.time()) + 2
            reply.result.CopyFrom(proxy.ConnectResult(user="silent-refresh-user", expire_at=self.first_expiry))
        else:
            reply.disconnect.CopyFrom(proxy.ProxyDisconnect(code=3500, reason="bad session"))
        await msg.respond(reply.SerializeToString())

    async def on_refresh(self, msg: Msg) -> None:
        self.refreshes += 1
        if proxy.RefreshRequest.FromString(msg.data).user == "silent-refresh-user":
            return  # never answers
        reply = proxy.RefreshReply(result=proxy.RefreshResult(expire_at=int(time.time()) + 60))
        await msg.respond(reply.SerializeToString())

    async def on_subscribe(self, msg: Msg) -> None:
        request = proxy.SubscribeRequest.FromString(msg.data)
        if request.channel.endswith(":silent"):
            return  # never answers
        reply = proxy.SubscribeReply()
        if request.channel.endswith(":open"):
            reply.result.CopyFrom(proxy.SubscribeResult(info=b'{"seat":7}'))
        else:
            reply.error.CopyFrom(proxy.ProxyError(code=103, message="not for you"))
        await msg.respond(reply.SerializeToString())

    async def on_publish(self, msg: Msg) -> None:
        request = proxy.PublishRequest.FromString(msg.data)
        if request.channel.endswith(":silent"):
            return  # never answers
        original = json.loads(request.data)
        reply = proxy.PublishReply(result=proxy.PublishResult(data=json.dumps({"moderated": original}).encode()))
        await msg.respond(reply.SerializeToString())


@pytest.fixture
async def backend(nats_url: str) -> AsyncIterator[Backend]:
    nc = await connect(nats_url, name="backend")
    backend = Backend(nc)
    await backend.start()
    yield backend
    await nc.close()


@pytest.fixture
async def gateway(make_gateway: GatewayFactory, backend: Backend) -> Gateway:
    return await make_gateway(
        NAMESPACES,
        proxy_connect=True,
        proxy_refresh=True,
        proxy_timeout=PROXY_TIMEOUT,
        proxy_refresh_margin=1.5,
        ping_interval=30,
    )


async def cookie_client(gateway: Gateway, cookie: str) -> Any:
    return await open_client(gateway, additional_headers={"Cookie": cookie})


async def test_cookie_connect_is_decided_by_the_backend(gateway: Gateway, backend: Backend) -> None:
    client = await cookie_client(gateway, "session=good")
    result = (await client.command("connect", {}))["connect"]
    assert "expires" not in result  # the gateway refreshes with the backend, not the SDK
    assert set(result["subs"]) == {"chat:auto"}
    assert backend.connect_headers["Cookie"] == "session=good"
    bad = await cookie_client(gateway, "session=evil")
    await bad.send({"id": 1, "connect": {}})
    assert await bad.close_code() == 3500


async def test_silent_backend_is_a_temporary_error(gateway: Gateway) -> None:
    client = await cookie_client(gateway, "session=slow")
    reply = await client.command("connect", {})
    assert reply["error"]["code"] == 100
    assert reply["error"]["temporary"] is True


async def test_proxied_connection_is_refreshed_with_the_backend(gateway: Gateway, backend: Backend) -> None:
    client = await cookie_client(gateway, "session=good")
    assert "connect" in await client.command("connect", {})
    # Refreshed with the backend, and still connected past the first expiry.
    await wait_until_async(lambda: backend.refreshes >= 1, 10, "a refresh with the backend")
    await wait_until_async(lambda: time.time() > backend.first_expiry + 0.5, 10, "the first expiry to pass")
    assert client.ws.close_code is None
    assert "ping" in await client.command("ping", {})


async def test_subscribe_and_publish_decisions(gateway: Gateway) -> None:
    client = await cookie_client(gateway, "session=good")
    await client.command("connect", {})
    assert (await client.command("subscribe", {"channel": "gated:closed"}))["error"]["code"] == 103
    assert "subscribe" in await client.command("subscribe", {"channel": "gated:open"})
    assert "subscribe" in await client.command("subscribe", {"channel": "moderated:room"})
    assert "publish" in await client.command("publish", {"channel": "moderated:room", "data": {"text": "hi"}})
    push = (await client.next_push())["push"]
    assert push["pub"]["data"] == {"moderated": {"text": "hi"}}


async def test_rpc_reaches_whichever_backend_answers_the_method(gateway: Gateway, nats_url: str) -> None:
    nc = await connect(nats_url, name="rpc-backend")

    async def answer(msg: Msg) -> None:
        request = proxy.RPCRequest.FromString(msg.data)
        reply = proxy.RPCReply()
        if request.method == "sum":
            numbers = json.loads(request.data)
            reply.result.data = json.dumps({"sum": sum(numbers), "by": request.user}).encode()
        else:
            reply.error.CopyFrom(proxy.ProxyError(code=1000, message="bad method"))
        await msg.respond(reply.SerializeToString())

    subjects = Subjects()
    await nc.subscribe(subjects.rpc("sum"), queue="rpc", cb=answer)
    await nc.subscribe(subjects.rpc("broken"), queue="rpc", cb=answer)
    await nc.flush()
    await nc.flush()
    client = await cookie_client(gateway, "session=good")
    await client.command("connect", {})
    assert (await client.command("rpc", {"method": "sum", "data": [1, 2, 3]}))["rpc"] == {
        "data": {"sum": 6, "by": "cookie-user"}
    }
    assert (await client.command("rpc", {"method": "broken", "data": {}}))["error"]["code"] == 1000
    assert (await client.command("rpc", {"method": "nobody.home", "data": {}}))["error"]["code"] == 108
    await nc.close()


# A backend that never answers: every decision is bounded by proxy_timeout.


def assert_temporary(reply: dict[str, Any]) -> None:
    assert reply["error"]["code"] == 100, reply
    assert reply["error"]["temporary"] is True, reply


async def test_subscribe_and_publish_decisions_a_backend_never_answers_are_temporary_errors(
    gateway: Gateway,
) -> None:
    client = await cookie_client(gateway, "session=good")
    await client.command("connect", {})
    assert_temporary(await client.command("subscribe", {"channel": "gated:silent"}))
    assert "subscribe" in await client.command("subscribe", {"channel": "moderated:silent"})
    assert_temporary(await client.command("publish", {"channel": "moderated:silent", "data": {"text": "hi"}}))
    # The connection lives on and is not subscribed to what was not decided.
    assert "subscribe" in await client.command("subscribe", {"channel": "gated:open"})
    assert (await client.command("unsubscribe", {"channel": "gated:silent"})).get("error") is None
    assert client.ws.close_code is None


async def test_an_rpc_its_backend_never_answers_is_a_temporary_error(gateway: Gateway, nats_url: str) -> None:
    nc = await connect(nats_url, name="rpc-backend")
    calls = 0

    async def never_answer(msg: Msg) -> None:
        nonlocal calls
        calls += 1

    await nc.subscribe(Subjects().rpc("silent"), queue="rpc", cb=never_answer)
    await nc.flush()
    client = await cookie_client(gateway, "session=good")
    await client.command("connect", {})
    assert_temporary(await client.command("rpc", {"method": "silent", "data": {}}))
    assert calls == 1
    assert "ping" in await client.command("ping", {})
    await nc.close()


async def test_a_refresh_its_backend_never_answers_leaves_the_connection_until_it_expires(
    make_gateway: GatewayFactory, backend: Backend
) -> None:
    gateway = await make_gateway(
        NAMESPACES,
        proxy_connect=True,
        proxy_refresh=True,
        proxy_timeout=timeout(0.5),
        proxy_refresh_margin=1.5,
        expiry_grace=0,
        ping_interval=30,
    )
    client = await cookie_client(gateway, "session=silent-refresh")
    assert "connect" in await client.command("connect", {})
    await wait_until_async(lambda: backend.refreshes >= 1, 10, "a refresh asked of the backend")
    # Silence is no answer: the connection is neither dropped at once nor kept past its expiry.
    assert await client.close_code(seconds=10) == 3005
    assert time.time() >= backend.first_expiry
