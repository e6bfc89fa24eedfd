"""The server API with the unmodified `cent` client (PyPI) against real processes.

One NATS server with a user per service (the API as user `api`: its
least-privilege permissions are enough), history, presence, two gateways and
the API as subprocesses; centrifuge-python SDK clients observe each method's
effect. Error paths: bad key, bad JSON, not POST, oversized body, unknown
namespace, history where the namespace keeps none.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cent import (
    AsyncClient,
    BatchRequest,
    BroadcastRequest,
    CentApiResponseError,
    CentUnauthorizedError,
    ChannelsRequest,
    Disconnect,
    DisconnectRequest,
    HistoryRemoveRequest,
    HistoryRequest,
    InfoRequest,
    PresenceRequest,
    PresenceStatsRequest,
    PublishRequest,
    RefreshRequest,
    StreamPosition,
    SubscribeRequest,
    UnsubscribeRequest,
)
from centrifuge import (
    ClientEventHandler,
    ServerPublicationContext,
    ServerSubscribedContext,
    ServerUnsubscribedContext,
)

from meshcast.testing import (
    NatsServer,
    api_process,
    timeout,
    wait_until_async,
    within,
    ws_url,
)

from .apistack import GATEWAY_TIMEOUT, KEY, MAX_BODY, SCATTER_WAIT, ApiStack, api_stack, raw_call
from .conftest import NAMESPACES
from .sdk import ConnectionEvents, connected, disconnected, sdk_client, subscribed

pytestmark = pytest.mark.e2e

__all__ = ["api_stack"]  # the module-scoped fixture, imported


@pytest.fixture
async def cent(api_stack: ApiStack) -> AsyncIterator[AsyncClient]:
    client = AsyncClient(api_stack.base, KEY, timeout=timeout(10))
    yield client
    await client._session.close()


class ServerSide(ClientEventHandler):
    """A connection's server-side subscriptions, as the SDK reports them."""

    def __init__(self) -> None:
        self.subscribed: asyncio.Queue[ServerSubscribedContext] = asyncio.Queue()
        self.unsubscribed: asyncio.Queue[str] = asyncio.Queue()
        self.publications: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    async def on_subscribed(self, ctx: ServerSubscribedContext) -> None:
        await self.subscribed.put(ctx)

    async def on_unsubscribed(self, ctx: ServerUnsubscribedContext) -> None:
        await self.unsubscribed.put(ctx.channel)

    async def on_publication(self, ctx: ServerPublicationContext) -> None:
        await self.publications.put((ctx.channel, ctx.pub.data))


# --------------------------------------------------------------------------
# publish, broadcast, history
# --------------------------------------------------------------------------


async def test_publish_reaches_subscribers_on_both_gateways_and_is_stored(
    api_stack: ApiStack, cent: AsyncClient
) -> None:
    gw1, gw2 = api_stack.gateways
    alice, bob = sdk_client(ws_url(gw1), "alice"), sdk_client(ws_url(gw2), "bob")
    await connected(alice, bob)
    try:
        at_alice, at_bob = await subscribed(alice, "chat:pub"), await subscribed(bob, "chat:pub")
        result = await cent.publish(PublishRequest(channel="chat:pub", data={"n": 1}, tags={"k": "v"}))
        assert result.offset >= 1
        assert result.epoch
        assert await at_alice.next() == {"n": 1}
        assert await at_bob.next() == {"n": 1}
        again = await cent.publish(PublishRequest(channel="chat:pub", data={"n": 2}, idempotency_key="once"))
        retried = await cent.publish(PublishRequest(channel="chat:pub", data={"n": 2}, idempotency_key="once"))
        assert retried.offset == again.offset == result.offset + 1
        assert await at_bob.next() == {"n": 2}

        history = await cent.history(HistoryRequest(channel="chat:pub", limit=-1))
        assert [p.data for p in history.publications] == [{"n": 1}, {"n": 2}]
        assert history.publications[0].tags == {"k": "v"}
        assert (history.epoch, history.offset) == (result.epoch, again.offset)
        newest = await cent.history(HistoryRequest(channel="chat:pub", limit=1, reverse=True))
        assert [p.data for p in newest.publications] == [{"n": 2}]
        since = StreamPosition(offset=result.offset, epoch=result.epoch)
        after = await cent.history(HistoryRequest(channel="chat:pub", limit=10, since=since))
        assert [p.offset for p in after.publications] == [again.offset]

        lobby = await subscribed(alice, "lobby")
        assert (await cent.publish(PublishRequest(channel="lobby", data=[1, 2]))).offset == 0
        assert await lobby.next() == [1, 2]
    finally:
        await disconnected(alice, bob)


async def test_broadcast_answers_per_channel_and_history_remove_empties_it(
    api_stack: ApiStack, cent: AsyncClient
) -> None:
    alice = sdk_client(ws_url(api_stack.gateways[1]), "alice")
    await connected(alice)
    try:
        at_alice = await subscribed(alice, "chat:cast")
        result = await cent.broadcast(BroadcastRequest(channels=["chat:cast", "nope:x", "lobby"], data={"b": 1}))
        first, unknown, lobby = result.responses
        assert first.result is not None
        assert first.result.offset >= 1
        assert unknown.error is not None
        assert unknown.error.code == 102
        assert lobby.error is None
        assert await at_alice.next() == {"b": 1}

        await cent.history_remove(HistoryRemoveRequest(channel="chat:cast"))
        assert (await cent.history(HistoryRequest(channel="chat:cast", limit=-1))).publications == []
    finally:
        await disconnected(alice)


async def test_batch_replies_in_order_sequential_and_parallel(api_stack: ApiStack, cent: AsyncClient) -> None:
    for parallel in (False, True):
        requests: list[Any] = [
            PublishRequest(channel="chat:batch", data={"i": i}, idempotency_key=f"{parallel}-{i}") for i in range(3)
        ]
        requests.append(HistoryRequest(channel="chat:batch", limit=-1))
        result = await cent.batch(BatchRequest(requests=requests, parallel=parallel))
        offsets = [getattr(r, "offset", 0) for r in result.replies[:3]]
        assert all(o >= 1 for o in offsets)
        if not parallel:
            assert offsets == sorted(offsets)
        assert len(result.replies) == 4


# --------------------------------------------------------------------------
# subscribe, unsubscribe, disconnect, refresh: control messages to every gateway
# --------------------------------------------------------------------------


async def test_subscribe_reaches_every_connection_of_the_user_then_unsubscribe(
    api_stack: ApiStack, cent: AsyncClient
) -> None:
    gw1, gw2 = api_stack.gateways
    events = (ServerSide(), ServerSide())
    carol = (sdk_client(ws_url(gw1), "carol", events=events[0]), sdk_client(ws_url(gw2), "carol", events=events[1]))
    await connected(*carol)
    try:
        await cent.subscribe(SubscribeRequest(user="carol", channel="chat:srv", data={"hello": 1}))
        for seen in events:
            ctx = await within(seen.subscribed.get())
            assert ctx.channel == "chat:srv"
            assert ctx.data == {"hello": 1}
            assert ctx.recoverable
        await cent.publish(PublishRequest(channel="chat:srv", data={"to": "carol"}))
        for seen in events:
            assert await within(seen.publications.get()) == ("chat:srv", {"to": "carol"})

        await cent.unsubscribe(UnsubscribeRequest(user="carol", channel="chat:srv"))
        for seen in events:
            assert await within(seen.unsubscribed.get()) == "chat:srv"

        # One client only, recovering what it missed.
        since = await cent.publish(PublishRequest(channel="chat:srv", data={"missed": 1}))
        one = carol[1].client_id
        position = StreamPosition(offset=since.offset - 1, epoch=since.epoch)
        await cent.subscribe(SubscribeRequest(user="carol", channel="chat:srv", client=one, recover_since=position))
        assert (await within(events[1].subscribed.get())).channel == "chat:srv"
        assert await within(events[1].publications.get()) == ("chat:srv", {"missed": 1})
        await asyncio.sleep(timeout(0.3))
        assert events[0].subscribed.empty()
    finally:
        await disconnected(*carol)


async def test_disconnect_closes_with_the_code_and_keeps_the_whitelist(api_stack: ApiStack, cent: AsyncClient) -> None:
    gw1, gw2 = api_stack.gateways
    events = (ConnectionEvents(), ConnectionEvents())
    dave = (sdk_client(ws_url(gw1), "dave", events=events[0]), sdk_client(ws_url(gw2), "dave", events=events[1]))
    await connected(*dave)
    try:
        kept = dave[1].client_id
        await cent.disconnect(
            DisconnectRequest(user="dave", whitelist=[kept], disconnect=Disconnect(code=4501, reason="bye"))
        )
        await events[0].wait_for_code(4501, 2)
        await asyncio.sleep(timeout(0.3))
        assert 4501 not in events[1].codes
        await within(dave[1].publish("lobby", {"still": "here"}))
    finally:
        await disconnected(*dave)


async def test_refresh_expired_closes_with_3005(api_stack: ApiStack, cent: AsyncClient) -> None:
    events = ConnectionEvents()
    erin = sdk_client(ws_url(api_stack.gateways[0]), "erin", events=events)
    await connected(erin)
    try:
        await cent.refresh(RefreshRequest(user="erin", expire_at=2_000_000_000))
        await cent.refresh(RefreshRequest(user="erin", expired=True))
        await events.wait_for_code(3005, 2)
    finally:
        await disconnected(erin)


# --------------------------------------------------------------------------
# presence, channels, info: cluster-wide
# --------------------------------------------------------------------------


async def test_presence_channels_and_info_see_both_gateways(api_stack: ApiStack, cent: AsyncClient) -> None:
    gw1, gw2 = api_stack.gateways
    alice, bob = sdk_client(ws_url(gw1), "alice"), sdk_client(ws_url(gw2), "bob")
    await connected(alice, bob)
    try:
        await subscribed(alice, "chat:here")
        await subscribed(bob, "chat:here")

        async def both_present() -> bool:
            stats = await cent.presence_stats(PresenceStatsRequest(channel="chat:here"))
            return stats.num_clients == 2

        deadline = asyncio.get_running_loop().time() + timeout(5)
        while not await both_present():
            assert asyncio.get_running_loop().time() < deadline, "presence never showed both clients"
            await asyncio.sleep(0.1)
        stats = await cent.presence_stats(PresenceStatsRequest(channel="chat:here"))
        assert (stats.num_clients, stats.num_users) == (2, 2)
        presence = await cent.presence(PresenceRequest(channel="chat:here"))
        assert sorted(info.user for info in presence.presence.values()) == ["alice", "bob"]
        assert set(presence.presence) == {alice.client_id, bob.client_id}

        # Once the API has listened GATEWAY_TIMEOUT, both gateways are known from their
        # heartbeats: no need to wait out the window.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout(GATEWAY_TIMEOUT + 3 * SCATTER_WAIT)
        while True:
            started = loop.time()
            channels = await cent.channels(ChannelsRequest(pattern="chat:he*"))
            if loop.time() - started < SCATTER_WAIT / 2:
                break
            assert loop.time() < deadline, "channels never ended before the scatter window"
        assert channels.channels["chat:here"].num_clients == 2
        assert "lobby" not in channels.channels
        either = await cent.channels(ChannelsRequest(pattern="{chat:here,news:*}"))
        assert set(either.channels) == {"chat:here"}
        with pytest.raises(CentApiResponseError) as unbalanced:
            await cent.channels(ChannelsRequest(pattern="{chat:here"))
        assert unbalanced.value.code == 107

        info = await cent.info(InfoRequest())
        gateways = [n for n in info.nodes if n.name.startswith("gateway")]
        assert sorted(n.name for n in gateways) == ["gateway-1", "gateway-2"]
        assert sum(n.num_clients for n in gateways) >= 2
        # One entry per running process: the gateways, the API replica, each service.
        kinds = sorted(n.name.split()[0] for n in info.nodes if not n.name.startswith("gateway"))
        assert kinds == ["api", "history", "presence"]
        assert len({n.uid for n in info.nodes}) == len(info.nodes) == 5
        assert all(n.process is not None and n.process.rss > 0 and n.version for n in info.nodes)
    finally:
        await disconnected(alice, bob)


# --------------------------------------------------------------------------
# error paths
# --------------------------------------------------------------------------


async def test_errors_come_as_centrifugo_codes(api_stack: ApiStack, cent: AsyncClient) -> None:
    with pytest.raises(CentApiResponseError) as unknown:
        await cent.publish(PublishRequest(channel="nope:x", data={}))
    assert unknown.value.code == 102
    with pytest.raises(CentApiResponseError) as no_history:
        await cent.history(HistoryRequest(channel="lobby"))
    assert no_history.value.code == 108
    with pytest.raises(CentApiResponseError) as no_presence:
        await cent.presence(PresenceRequest(channel="lobby"))
    assert no_presence.value.code == 108
    with pytest.raises(CentApiResponseError) as no_user:
        await cent.disconnect(DisconnectRequest(user=""))
    assert no_user.value.code == 107
    last = await cent.publish(PublishRequest(channel="tiny:gone", data={}))
    with pytest.raises(CentApiResponseError) as stale:
        await cent.history(
            HistoryRequest(channel="tiny:gone", limit=1, since=StreamPosition(offset=last.offset, epoch="other"))
        )
    assert stale.value.code == 112

    wrong = AsyncClient(api_stack.base, "not-the-key", timeout=timeout(10))
    try:
        with pytest.raises(CentUnauthorizedError):
            await wrong.info(InfoRequest())
    finally:
        await wrong._session.close()


def test_http_statuses_have_empty_bodies(api_stack: ApiStack) -> None:
    key = {"X-API-Key": KEY}
    assert raw_call(api_stack, "info", b"{}", {}) == (401, b"")
    assert raw_call(api_stack, "info", b"{}", {"X-API-Key": KEY + "x"}) == (401, b"")
    assert raw_call(api_stack, "info", b"{}", {"Authorization": f"bearer {KEY}"}) == (401, b"")
    assert raw_call(api_stack, "publish", b"{not json", key) == (400, b"")
    assert raw_call(api_stack, "publish", b'{"channel": 5}', key) == (400, b"")
    assert raw_call(api_stack, "info", b"", key, verb="GET") == (405, b"")
    assert raw_call(api_stack, "info", b"", key) == (400, b"")  # `{}` is the empty request
    assert raw_call(api_stack, "no_such_method", b"{}", key) == (404, b"")
    big = json.dumps({"channel": "lobby", "data": "x" * MAX_BODY}).encode()
    assert raw_call(api_stack, "publish", big, key) == (413, b"")

    status, body = raw_call(
        api_stack, "publish", b'{"channel":"lobby","data":{"x":1}}', {"Authorization": f"apikey {KEY}"}
    )
    assert (status, json.loads(body)) == (200, {"result": {}})
    status, body = raw_call(api_stack, "publish", b'{"channel":"lobby"}', key)
    assert (status, json.loads(body)["error"]["code"]) == (200, 107)


def test_legacy_line_delimited_commands_answer_line_by_line(api_stack: ApiStack) -> None:
    """``POST /api`` as Centrifugo v6 still serves it (cent.js's ``pipeline()``)."""
    key = {"X-API-Key": KEY}
    commands = [
        {"method": "publish", "params": {"channel": "chat:legacy", "data": {"i": 0}}},
        {"method": "publish", "params": {"channel": 5}},
        {"method": "publish", "params": {"channel": "nope:x", "data": {}}},
        {"method": "history", "params": {"channel": "chat:legacy", "limit": -1}},
    ]
    status, body = raw_call(api_stack, "", b"\n".join(json.dumps(c).encode() for c in commands), key)
    assert status == 200
    published, malformed, unknown_channel, history = (json.loads(line) for line in body.split(b"\n"))
    assert published["result"]["offset"] >= 1
    assert malformed == {"error": {"code": 107, "message": "bad request"}}
    assert unknown_channel["error"]["code"] == 102
    assert [p["data"] for p in history["result"]["publications"]] == [{"i": 0}]

    assert raw_call(api_stack, "", b'{"method": "info"}\n{not json', key) == (400, b"")
    # As Centrifugo: an unknown method refuses the whole request.
    assert raw_call(api_stack, "", b'{"method": "info"}\n{"method": "no_such_method"}', key) == (400, b"")
    assert raw_call(api_stack, "", b"[1, 2]", key) == (400, b"")
    assert raw_call(api_stack, "", b'{"method": "info"}', {}) == (401, b"")
    assert raw_call(api_stack, "", b"", key, verb="GET") == (405, b"")


async def test_skip_history_reaches_subscribers_now_and_is_never_stored(api_stack: ApiStack, cent: AsyncClient) -> None:
    alice = sdk_client(ws_url(api_stack.gateways[0]), "alice")
    await connected(alice)
    try:
        at_alice = await subscribed(alice, "chat:skip")
        stored = await cent.publish(PublishRequest(channel="chat:skip", data={"n": 1}))
        skipped = await cent.publish(PublishRequest(channel="chat:skip", data={"n": 2}, skip_history=True))
        after = await cent.publish(PublishRequest(channel="chat:skip", data={"n": 3}))
        assert (skipped.offset, skipped.epoch) == (0, "")
        assert after.offset == stored.offset + 1
        # No order is promised between a skipped publication and stored ones.
        received = [await at_alice.next() for _ in range(3)]
        assert sorted(received, key=lambda d: d["n"]) == [{"n": 1}, {"n": 2}, {"n": 3}]
        history = await cent.history(HistoryRequest(channel="chat:skip", limit=-1))
        assert [p.data for p in history.publications] == [{"n": 1}, {"n": 3}]
    finally:
        await disconnected(alice)


def test_the_api_refuses_to_start_without_a_key(tmp_path: Path) -> None:
    env = {"MESHCAST_NATS_URL": "nats://127.0.0.1:1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "meshcast.api"], env=env, capture_output=True, timeout=timeout(30), check=False
    )
    assert done.returncode == 2
    assert b"api_key" in done.stdout + done.stderr


async def test_insecure_mode_is_explicit_and_logged(tmp_path: Path, nats_server: NatsServer) -> None:
    proc = api_process(
        tmp_path,
        [nats_server.url],
        namespaces_file=NAMESPACES,
        api_key="",
        extra_env={"MESHCAST_HEALTH_PORT": "0"},
    ).start()
    try:
        await wait_until_async(lambda: "without a key" in proc.logs(), what="insecure warning")
        status, body = raw_call(ApiStack((proc, proc), proc), "info", b"{}", {})
        assert status == 200
        assert json.loads(body)["result"]["nodes"]
    finally:
        code = proc.terminate()
    assert code == 0, "SIGTERM stops it cleanly"
