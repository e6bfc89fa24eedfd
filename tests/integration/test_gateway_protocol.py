"""A gateway against a real nats-server, driven by raw WebSocket clients."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from meshcast.bus import Subjects, connect, publish
from meshcast.gateway.app import Gateway
from meshcast.proto.bus_pb2 import Control, DisconnectUser
from meshcast.proto.client_pb2 import Command, ConnectRequest, Reply, SubscribeRequest
from meshcast.protocol.codec import encode_varint
from meshcast.testing import timeout, token_ttl, wait_until_async, within

from .harness import GatewayFactory, JsonClient, connected_client, open_client, open_ws, token, url


async def test_connect_reply_carries_client_id_ping_and_expiry(gateway: Gateway) -> None:
    client = await open_client(gateway)
    reply = await client.command("connect", {"token": token("alice", ttl=600, name="Alice")})
    result = reply["connect"]
    assert result["client"]
    assert result["ping"] == 25
    assert result["pong"] is True
    assert result["expires"] is True
    assert 590 <= result["ttl"] <= 600


async def test_invalid_token_closes_with_3500(gateway: Gateway) -> None:
    client = await open_client(gateway)
    await client.send({"id": 1, "connect": {"token": "not-a-jwt"}})
    assert await client.close_code() == 3500


async def test_token_signed_with_another_secret_closes_with_3500(gateway: Gateway) -> None:
    import jwt

    client = await open_client(gateway)
    forged = jwt.encode({"sub": "mallory", "exp": 9999999999}, "another-secret-of-enough-length!!", algorithm="HS256")
    await client.send({"id": 1, "connect": {"token": forged}})
    assert await client.close_code() == 3500


async def test_expired_token_is_error_109_then_the_socket_reads_nothing_and_is_dropped(
    make_gateway: GatewayFactory,
) -> None:
    # As Centrifugo: after a connect error the server stops reading and drops the TCP
    # connection (no close frame: 1006), so one socket cannot try token after token.
    gateway = await make_gateway(close_timeout=timeout(0.5))
    client = await open_client(gateway)
    reply = await client.command("connect", {"token": token("alice", ttl=-10)})
    assert reply["error"] == {"code": 109, "message": "token expired"}
    await client.send({"id": 2, "connect": {"token": token("alice")}})
    assert await client.close_code() == 1006
    assert not gateway._ctx or not gateway._ctx.hub.clients_of("alice")


async def test_a_client_that_closes_after_a_connect_error_closes_cleanly(gateway: Gateway) -> None:
    client = await open_client(gateway)
    assert (await client.command("connect", {"token": token("alice", ttl=-10)}))["error"]["code"] == 109
    await within(client.ws.close(4000, "bye"))
    assert client.ws.close_code == 4000


async def test_missing_token_closes_with_3501_unless_anonymous_allowed(make_gateway: GatewayFactory) -> None:
    strict = await make_gateway()
    client = await open_client(strict)
    await client.send({"id": 1, "connect": {}})
    assert await client.close_code() == 3501
    lenient = await make_gateway(
        "allow_anonymous: true\nnamespaces:\n  - name: public\n    allow_subscribe_anonymous: true\n"
    )
    anon = await open_client(lenient)
    assert "connect" in await anon.command("connect", {})
    assert (await anon.command("subscribe", {"channel": "public:a"})) == {"id": 2, "subscribe": {}}
    assert (await anon.command("subscribe", {"channel": "lobby"}))["error"]["code"] == 103


async def test_publication_reaches_json_and_protobuf_subscribers(gateway: Gateway) -> None:
    alice = await connected_client(gateway, "alice")
    bob = await connected_client(gateway, "bob")
    assert await bob.command("subscribe", {"channel": "chat:room"}) == {"id": 2, "subscribe": {}}

    pb = await open_ws(gateway, subprotocols=["centrifuge-protobuf"])
    assert pb.subprotocol == "centrifuge-protobuf"
    frame = b""
    for cmd in (
        Command(id=1, connect=ConnectRequest(token=token("carol"))),
        Command(id=2, subscribe=SubscribeRequest(channel="chat:room")),
    ):
        body = cmd.SerializeToString()
        frame = encode_varint(len(body)) + body
        await pb.send(frame)
        await within(pb.recv())

    assert await alice.command("publish", {"channel": "chat:room", "data": {"text": "hi"}}) == {"id": 2, "publish": {}}
    push = (await bob.next_push())["push"]
    assert push["channel"] == "chat:room"
    assert push["pub"]["data"] == {"text": "hi"}
    assert push["pub"]["info"]["user"] == "alice"

    raw = await within(pb.recv())
    assert isinstance(raw, bytes)
    reply = Reply()
    reply.ParseFromString(raw[1:])
    assert reply.push.channel == "chat:room"
    assert json.loads(reply.push.pub.data) == {"text": "hi"}
    await pb.close()


async def test_backend_publishes_with_one_nats_call(gateway: Gateway, nats_url: str) -> None:
    bob = await connected_client(gateway, "bob")
    await bob.command("subscribe", {"channel": "news:today"})
    nc = await connect(nats_url, name="backend")
    await publish(nc, "news:today", b'{"headline":"x"}')
    await nc.flush()
    push = (await bob.next_push())["push"]
    assert push["pub"]["data"] == {"headline": "x"}
    assert "info" not in push["pub"]
    await nc.close()


async def test_publications_keep_their_order(gateway: Gateway) -> None:
    alice = await connected_client(gateway, "alice")
    bob = await connected_client(gateway, "bob")
    await bob.command("subscribe", {"channel": "chat:order"})
    for i in range(50):
        await alice.send({"id": 100 + i, "publish": {"channel": "chat:order", "data": {"n": i}}})
    seen: list[int] = []
    while len(seen) < 50:
        push = await bob.next_push()
        seen.append(push["push"]["pub"]["data"]["n"])
    assert seen == list(range(50))


@pytest.mark.parametrize(
    ("channel", "code"),
    [
        ("nowhere:x", 102),
        ("news:x", 103),
        ("$chat:private", 103),
        ("dialog#bob,carol", 103),
        ("chat:" + "x" * 300, 107),
    ],
)
async def test_publish_refusals_carry_the_specified_code(gateway: Gateway, channel: str, code: int) -> None:
    alice = await connected_client(gateway, "alice")
    reply = await alice.command("publish", {"channel": channel, "data": {"x": 1}})
    assert reply["error"]["code"] == code


async def test_user_limited_channel_admits_its_users(gateway: Gateway) -> None:
    bob = await connected_client(gateway, "bob")
    assert await bob.command("subscribe", {"channel": "dialog#bob,carol"}) == {"id": 2, "subscribe": {}}


async def test_subscribe_errors(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(max_channels_per_connection=2)
    alice = await connected_client(gateway)
    assert (await alice.command("subscribe", {"channel": "unknown:x"}))["error"]["code"] == 102
    assert "subscribe" in await alice.command("subscribe", {"channel": "chat:a"})
    assert (await alice.command("subscribe", {"channel": "chat:a"}))["error"]["code"] == 105
    assert "subscribe" in await alice.command("subscribe", {"channel": "chat:b"})
    assert (await alice.command("subscribe", {"channel": "chat:c"}))["error"]["code"] == 106


async def test_channel_regex_is_searched_in_the_name_after_the_namespace(make_gateway: GatewayFactory) -> None:
    # As Centrifugo (Go's MatchString on the name after the namespace); no match is 107.
    gateway = await make_gateway(
        "namespaces:\n  - name: strict\n    channel_regex: '[a-z0-9]+'\n"
        "  - name: whole\n    channel_regex: '^[a-z]+$'\n"
    )
    alice = await connected_client(gateway)
    for channel in ("strict:abc", "strict:ABCd", "whole:abc"):
        assert "subscribe" in await alice.command("subscribe", {"channel": channel}), channel
    for channel in ("strict:ABC", "whole:abC", "whole:"):
        reply = await alice.command("subscribe", {"channel": channel})
        assert reply["error"]["code"] == 107, channel
        assert (await alice.command("publish", {"channel": channel, "data": {}}))["error"]["code"] == 107
    assert (await alice.command("subscribe", {"channel": "nowhere:abc"}))["error"]["code"] == 102


@pytest.mark.parametrize("method", ["presence", "presence_stats", "history"])
async def test_features_a_namespace_lacks_answer_not_available(gateway: Gateway, method: str) -> None:
    alice = await connected_client(gateway)
    await alice.command("subscribe", {"channel": "chat:a"})
    assert (await alice.command(method, {"channel": "chat:a"}))["error"]["code"] == 108


async def test_rpc_without_a_backend_answers_not_available_and_ping_answers(gateway: Gateway) -> None:
    alice = await connected_client(gateway)
    assert (await alice.command("rpc", {"method": "m", "data": {}}))["error"]["code"] == 108
    assert await alice.command("ping", {}) == {"id": 3, "ping": {}}


@pytest.mark.parametrize("frame", ['{"id":2,"teleport":{"where":"moon"}}', '{"id":2}'], ids=["unknown", "none"])
async def test_unknown_method_or_none_closes_with_3501(gateway: Gateway, frame: str) -> None:
    # As Centrifugo: a command whose method the server does not know is a bad request.
    alice = await connected_client(gateway)
    await alice.ws.send(frame)
    assert await alice.close_code() == 3501


async def test_send_without_a_message_handler_closes_with_3508(gateway: Gateway) -> None:
    # As Centrifugo without a message handler: `send` has no reply to carry an error.
    alice = await connected_client(gateway)
    await alice.send({"send": {"data": {"hello": 1}}})
    assert await alice.close_code() == 3508


async def test_pong_without_a_ping_closes_with_3501(gateway: Gateway) -> None:
    # Centrifugo's "unnecessary pong": an empty command answers a server ping, nothing else.
    alice = await connected_client(gateway)
    await alice.ws.send("{}")
    assert await alice.close_code() == 3501


@pytest.mark.parametrize(
    "frame",
    ["{broken", '{"id":1,"subscribe":{"channel":"chat:a"}}', b"\x00\x01\x02"],
    ids=["bad-json", "before-connect", "binary-garbage"],
)
async def test_malformed_frames_close_with_3501_and_spare_others(gateway: Gateway, frame: str | bytes) -> None:
    bystander = await connected_client(gateway, "bob")
    await bystander.command("subscribe", {"channel": "chat:calm"})
    bad = await open_client(gateway)
    await bad.ws.send(frame)
    assert await bad.close_code() == 3501
    alice = await connected_client(gateway, "alice")
    await alice.command("publish", {"channel": "chat:calm", "data": {"still": "here"}})
    assert (await bystander.next_push())["push"]["pub"]["data"] == {"still": "here"}


async def test_bad_protobuf_closes_with_3501(gateway: Gateway) -> None:
    ws = await open_ws(gateway, subprotocols=["centrifuge-protobuf"])
    await ws.send(b"\x05\x0a\xff")
    await within(ws.wait_closed())
    assert ws.close_code == 3501


async def test_oversize_frame_closes_with_1009(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(max_message_size=1024)
    alice = await connected_client(gateway)
    await alice.send({"id": 5, "publish": {"channel": "chat:a", "data": "x" * 5000}})
    assert await alice.close_code() == 1009


async def test_client_that_never_connects_is_closed_as_stale(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(handshake_timeout=timeout(0.3))
    client = await open_client(gateway)
    assert await client.close_code() == 3502


async def test_missing_pong_closes_with_3012_and_answered_pings_keep_alive(make_gateway: GatewayFactory) -> None:
    ping, pong = timeout(0.5), timeout(1.0)
    gateway = await make_gateway(ping_interval=ping, pong_timeout=pong)
    silent = await connected_client(gateway, "silent")
    polite = await connected_client(gateway, "polite")
    for _ in range(4):  # two pong timeouts' worth of pings, each answered
        for reply in await polite.recv(seconds=2 * (0.5 + 1.0)):
            assert reply == {}
            await polite.ws.send("{}")
    assert await silent.close_code(seconds=2 * (0.5 + 1.0)) == 3012
    assert polite.ws.close_code is None


async def test_expired_connection_is_closed_with_3005_and_refresh_extends_it(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(ping_interval=30, expiry_grace=0)
    ttl = token_ttl(1)
    short = await open_client(gateway)
    assert "connect" in await short.command("connect", {"token": token("alice", ttl=ttl)})
    refreshed = await open_client(gateway)
    assert "connect" in await refreshed.command("connect", {"token": token("bob", ttl=ttl)})
    reply = await refreshed.command("refresh", {"token": token("bob", ttl=3600)})
    assert reply["refresh"]["expires"] is True
    assert await short.close_code(seconds=ttl + 5) == 3005
    assert refreshed.ws.close_code is None


async def test_refresh_with_an_expired_token_closes_with_3005(gateway: Gateway) -> None:
    # As Centrifugo: the connection has expired, not the command failed.
    alice = await connected_client(gateway, "alice")
    await alice.send({"id": 9, "refresh": {"token": token("alice", ttl=-5)}})
    assert await alice.close_code() == 3005


async def test_refresh_for_another_user_closes_with_3500(gateway: Gateway) -> None:
    alice = await connected_client(gateway, "alice")
    await alice.send({"id": 9, "refresh": {"token": token("mallory")}})
    assert await alice.close_code() == 3500


async def test_origin_allowlist_rejects_other_origins(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(allowed_origins=["https://app.example"])
    with pytest.raises(InvalidStatus) as info:
        await websockets.connect(url(gateway), origin="https://evil.example")  # type: ignore[arg-type]
    assert info.value.response.status_code == 403
    await open_ws(gateway, origin="https://app.example")


async def test_connection_limit_refuses_the_extra_socket(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(max_connections=1)
    await open_client(gateway)
    with pytest.raises(InvalidStatus) as info:
        await websockets.connect(url(gateway))
    assert info.value.response.status_code == 503


async def test_health_ready_and_metrics_endpoints(gateway: Gateway) -> None:
    await connected_client(gateway)
    base = f"http://127.0.0.1:{gateway.port}"

    def get(path: str) -> tuple[int, str]:
        with urllib.request.urlopen(base + path, timeout=5) as resp:
            return resp.status, resp.read().decode()

    assert (await asyncio.to_thread(get, "/health"))[0] == 200
    assert (await asyncio.to_thread(get, "/ready"))[0] == 200
    status, text = await asyncio.to_thread(get, "/metrics")
    assert status == 200
    assert "meshcast_gateway_connections" in text


async def test_nats_subscription_is_shared_and_released_with_the_last_subscriber(gateway: Gateway) -> None:
    ctx = gateway._ctx
    assert ctx is not None
    hub = ctx.hub
    a = await connected_client(gateway, "a")
    b = await connected_client(gateway, "b")
    await a.command("subscribe", {"channel": "chat:shared"})
    await b.command("subscribe", {"channel": "chat:shared"})
    assert hub.channel_count() == 1
    await a.command("unsubscribe", {"channel": "chat:shared"})
    assert hub.channel_count() == 1
    await b.ws.close()
    await wait_until_async(lambda: hub.channel_count() == 0, what="channel released")


async def test_control_disconnects_every_connection_of_a_user(gateway: Gateway, nats_url: str) -> None:
    first = await connected_client(gateway, "mallory")
    second = await connected_client(gateway, "mallory")
    other = await connected_client(gateway, "alice")
    nc = await connect(nats_url, name="backend")
    await nc.publish(Subjects().control, Control(disconnect=DisconnectUser(user="mallory")).SerializeToString())
    await nc.flush()
    assert await first.close_code() == 3503
    assert await second.close_code() == 3503
    assert other.ws.close_code is None
    await nc.close()


async def test_drain_closes_clients_with_a_reconnect_code(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway()
    client: JsonClient = await connected_client(gateway)
    await gateway.drain()
    assert await client.close_code() == 3001
    assert not gateway.ready()


async def test_connect_and_subscribe_batched_in_one_frame(gateway: Gateway) -> None:
    client = await open_client(gateway)
    await client.send(
        {"id": 1, "connect": {"token": token("alice")}},
        {"id": 2, "subscribe": {"channel": "chat:batched"}},
    )
    replies: list[dict[str, object]] = []
    while len(replies) < 2:
        replies.extend(await client.recv())
    assert "connect" in replies[0]
    assert replies[1] == {"id": 2, "subscribe": {}}


async def test_subscribe_batched_after_a_failed_connect_is_not_read(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(close_timeout=timeout(0.5))
    client = await open_client(gateway)
    await client.send({"id": 1, "connect": {"token": token("alice", ttl=-5)}}, {"id": 2, "subscribe": {"channel": "a"}})
    assert await client.recv() == [{"id": 1, "error": {"code": 109, "message": "token expired"}}]
    assert await client.close_code() == 1006
