"""meshcast.backend's contract with the gateway, without NATS: a request in, a reply out."""

from __future__ import annotations

import asyncio
import json

import pytest

from meshcast.backend import (
    Backend,
    Connect,
    ConnectRequest,
    Disconnect,
    LifecycleEvent,
    Publish,
    PublishRequest,
    Refresh,
    RefreshRequest,
    Reject,
    RPCRequest,
    Subscribe,
    SubscribeRequest,
)
from meshcast.backend.app import default_inbox_prefix
from meshcast.backend.dispatch import CONNECT, PUBLISH, REFRESH, RPC, SUBSCRIBE, TIMEOUT_REASON, answer
from meshcast.backend.permissions import Violations, parse
from meshcast.proto import proxy_pb2 as pb
from meshcast.proto.events_pb2 import Event
from meshcast.protocol import ErrorCode

RPC_CALL = pb.RPCRequest(client="c1", user="alice", method="who", data=b'{"channel": "chat:index"}').SerializeToString()
PUBLISH_CALL = pb.PublishRequest(client="c1", user="alice", channel="chat:index", data=b'{"text": "hi"}')


async def test_an_rpc_handler_gets_a_typed_request_and_its_bytes_become_the_result() -> None:
    seen: list[RPCRequest] = []

    async def who(request: RPCRequest) -> bytes:
        seen.append(request)
        return json.dumps({"users": [request.user]}).encode()

    reply = pb.RPCReply.FromString(await answer(RPC, who, RPC_CALL, time_limit=1))
    assert seen[0].json() == {"channel": "chat:index"}
    assert (seen[0].user, seen[0].method) == ("alice", "who")
    assert json.loads(reply.result.data) == {"users": ["alice"]}
    assert not reply.HasField("error")


async def test_reject_becomes_a_protocol_error_and_disconnect_a_close() -> None:
    async def refuse(request: PublishRequest) -> Publish:
        raise Reject(ErrorCode.PERMISSION_DENIED, "no spam")

    async def close(request: PublishRequest) -> Publish:
        raise Disconnect(4001, "banned")

    refused = pb.PublishReply.FromString(await answer(PUBLISH, refuse, PUBLISH_CALL.SerializeToString(), time_limit=1))
    assert (refused.error.code, refused.error.message, refused.error.temporary) == (103, "no spam", False)
    closed = pb.PublishReply.FromString(await answer(PUBLISH, close, PUBLISH_CALL.SerializeToString(), time_limit=1))
    assert (closed.disconnect.code, closed.disconnect.reason) == (4001, "banned")
    assert not closed.HasField("result")


async def test_a_publish_handler_may_rewrite_the_data_or_let_it_pass() -> None:
    async def clean(request: PublishRequest) -> Publish:
        return Publish(data=request.data.replace(b"hi", b"**"))

    async def allow(request: PublishRequest) -> None:
        return None

    cleaned = pb.PublishReply.FromString(await answer(PUBLISH, clean, PUBLISH_CALL.SerializeToString(), time_limit=1))
    assert cleaned.result.data == b'{"text": "**"}'
    passed = pb.PublishReply.FromString(await answer(PUBLISH, allow, PUBLISH_CALL.SerializeToString(), time_limit=1))
    assert passed.HasField("result")
    assert passed.result.data == b""


async def test_connect_subscribe_and_refresh_results_are_encoded_field_by_field() -> None:
    async def connect(request: ConnectRequest) -> Connect:
        assert request.headers == {"Cookie": "s=1"}
        return Connect(user="carol", expire_at=99, info=b'{"n": 1}', channels=("news",))

    async def subscribe(request: SubscribeRequest) -> Subscribe:
        return Subscribe(info=b'{"role": "member"}', expire_at=7)

    async def refresh(request: RefreshRequest) -> Refresh:
        return Refresh(expired=True)

    ask = pb.ConnectRequest(client="c", headers={"Cookie": "s=1"}).SerializeToString()
    connected = pb.ConnectReply.FromString(await answer(CONNECT, connect, ask, time_limit=1))
    result = connected.result
    assert (result.user, result.expire_at, list(result.channels)) == ("carol", 99, ["news"])
    ask = pb.SubscribeRequest(client="c", channel="chat:x").SerializeToString()
    subscribed = pb.SubscribeReply.FromString(await answer(SUBSCRIBE, subscribe, ask, time_limit=1))
    assert (subscribed.result.info, subscribed.result.expire_at) == (b'{"role": "member"}', 7)
    refreshed = pb.RefreshReply.FromString(await answer(REFRESH, refresh, b"", time_limit=1))
    assert refreshed.result.expired


async def test_a_slow_handler_is_cut_off_with_a_temporary_error() -> None:
    async def slow(request: RPCRequest) -> bytes:
        await asyncio.sleep(10)
        return b""

    reply = pb.RPCReply.FromString(await answer(RPC, slow, RPC_CALL, time_limit=0.05))
    assert (reply.error.code, reply.error.message, reply.error.temporary) == (100, TIMEOUT_REASON, True)


async def test_a_crashing_handler_or_a_wrong_result_is_an_internal_error_without_the_traceback() -> None:
    async def crash(request: RPCRequest) -> bytes:
        raise RuntimeError("secret detail")

    async def wrong(request: RPCRequest) -> str:
        return "not bytes"

    for handler in (crash, wrong):
        reply = pb.RPCReply.FromString(await answer(RPC, handler, RPC_CALL, time_limit=1))
        assert (reply.error.code, reply.error.temporary) == (100, True)
        assert "secret" not in reply.error.message


async def test_an_undecodable_request_is_a_bad_request() -> None:
    async def never(request: RPCRequest) -> bytes:
        raise AssertionError("not called")

    reply = pb.RPCReply.FromString(await answer(RPC, never, b"\xff\xff\xff", time_limit=1))
    assert reply.error.code == ErrorCode.BAD_REQUEST


def test_codes_outside_their_family_are_refused_at_once() -> None:
    with pytest.raises(ValueError, match="100-1999"):
        Reject(3000)
    with pytest.raises(ValueError, match="3000-4999"):
        Disconnect(103)
    assert str(Reject(ErrorCode.PERMISSION_DENIED)) == "103 permission denied"


def test_handlers_register_once_each_before_start() -> None:
    app = Backend(name="bot")

    @app.rpc("who")
    async def who(request: RPCRequest) -> bytes:
        return b""

    with pytest.raises(ValueError, match="already registered"):
        app.rpc("who")(who)
    with pytest.raises(ValueError, match="event kinds"):
        app.on_event("bogus")
    with pytest.raises(ValueError, match="backend name"):
        Backend(name="has.dot")


def test_the_inbox_prefix_follows_the_nats_user() -> None:
    assert default_inbox_prefix("nats://backend:pw@127.0.0.1:4222", None) == "_INBOX_backend"
    assert default_inbox_prefix("nats://127.0.0.1:4222", "bot") == "_INBOX_bot"
    assert default_inbox_prefix("nats://127.0.0.1:4222", None) is None
    app = Backend.from_env("bot", {"MESHCAST_NATS_URL": "nats://x:4222", "MESHCAST_NATS_INBOX_PREFIX": "_INBOX_x"})
    assert app._inbox_prefix == "_INBOX_x"


def test_permission_violations_are_found_by_subject_whatever_the_case() -> None:
    violations = Violations()
    text = 'nats: permissions violation for subscription to "meshcast.rpc.~2fwho" using queue "bot"'
    assert parse(text) is not None
    violations.record(text)
    assert violations.find("subscribe", "meshcast.rpc.~2Fwho") is not None
    assert violations.find("publish", "meshcast.rpc.~2Fwho") is None
    violations.record('nats: permissions violation for publish to "$js.api.consumer.info.meshcast_events.bot"')
    with pytest.raises(PermissionError, match=r"\$JS\.API\.consumer\.info\.meshcast_events\.bot"):
        violations.check_prefix("publish", "$JS.API.", what="durable consumer")


def test_a_lifecycle_event_is_flattened_with_its_stream_sequence() -> None:
    event = Event(time_ms=5, gateway="g1")
    event.unsubscribe.user, event.unsubscribe.client, event.unsubscribe.channel = "alice", "c1", "chat:index"
    event.unsubscribe.code = 1
    flat = LifecycleEvent.of(event, 42)
    assert (flat.kind, flat.sequence, flat.user, flat.client) == ("unsubscribe", 42, "alice", "c1")
    assert (flat.channel, flat.code) == ("chat:index", 1)
    assert not flat.gateway_died
