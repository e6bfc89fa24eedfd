"""Connecting, tokens, refresh, heartbeats, rpc, send, and frames a server must refuse."""

from __future__ import annotations

from meshcast.protocol import Format

from ..script import OTHER_SECRET, At, Raw, Script, Session, Token, Var


def _connect_ok() -> Session:
    s = Script().open("a")
    s.call("a", "connect", token=Token("alice", claims={"info": {"name": "Alice"}}), name="conformance", version="1.0")
    return s.session("connect", short=True, about="a token with info, the client's name and version")


def _ping_command() -> Session:
    s = Script().connect("a").call("a", "ping")
    return s.session("ping_command", about="the schema's PingRequest (SDKs use empty frames instead)")


def _unsolicited_pong() -> Session:
    s = Script().connect("a").send("a", {}).quiet("a")
    s.call("a", "publish", channel="lobby{u}", data={"after": "pong"})
    return s.session("pong_without_ping", about="an empty command before the server pinged")


def _connect_without_token() -> Session:
    s = Script().open("a").call("a", "connect")
    return s.session("connect_without_token", short=True, about="allow_anonymous is off")


def _connect_expired() -> Session:
    s = Script().open("a").call("a", "connect", token=Token("alice", ttl=-30))
    return s.session("connect_expired_token", short=True, about="109: the SDK gets a fresh token")


def _connect_after_error() -> Session:
    s = Script().open("a").call("a", "connect", token=Token("alice", ttl=-30))
    s.call("a", "connect", token=Token("alice"))
    return s.session("connect_after_connect_error", about="a second connect on the socket a 109 answered")


def _connect_bad_signature() -> Session:
    s = Script().open("a").call("a", "connect", token=Token("alice", secret=OTHER_SECRET))
    return s.session("connect_bad_signature")


def _connect_malformed_token() -> Session:
    s = Script().open("a").call("a", "connect", token="not-a-jwt")
    return s.session("connect_malformed_token")


def _connect_without_exp() -> Session:
    s = Script().open("a").call("a", "connect", token=Token("alice", no_exp=True))
    return s.session("connect_token_without_exp")


def _connect_anonymous_token() -> Session:
    s = Script().open("a").call("a", "connect", token=Token(""))
    s.call("a", "subscribe", channel="lobby{u}").call("a", "publish", channel="lobby{u}", data={"x": 1})
    s.call("a", "history", channel="chat:anon{u}")
    return s.session("connect_anonymous_token", about="a valid token whose sub is empty; what it may do")


def _connect_token_expire_at() -> Session:
    s = Script().open("a").call("a", "connect", token=Token("alice", claims={"expire_at": At(120)}))
    return s.session("connect_token_expire_at", about="Centrifugo's expire_at claim: when the connection expires")


def _connect_recovers_server_side_subscriptions() -> Session:
    token = Token("alice", claims={"channels": ["chat:srvrec{u}"]})
    s = Script().open("a").call("a", "connect", token=token, capture={"epoch": "connect.subs.chat:srvrec{u}.epoch"})
    s.connect("b", "bob", token=Token("bob")).call("b", "publish", channel="chat:srvrec{u}", data={"n": 1})
    s.push("a", capture={"offset": "push.pub.offset"}).close("a")
    s.call("b", "publish", channel="chat:srvrec{u}", data={"n": 2})
    subs = {"chat:srvrec{u}": {"recover": True, "epoch": Var("epoch"), "offset": Var("offset", 0)}}
    s.open("a2").call("a2", "connect", token=token, subs=subs)
    return s.session("connect_recovers_server_side_subscriptions", about="the connect request's subs")


def _connect_twice() -> Session:
    s = Script().connect("a").call("a", "connect", token=Token("alice"))
    return s.session("connect_twice")


def _command_before_connect() -> Session:
    s = Script().open("a").call("a", "subscribe", channel="chat:early{u}")
    return s.session("command_before_connect", short=True)


def _connect_with_server_side_subscriptions() -> Session:
    token = Token("alice", claims={"channels": ["chat:srv{u}", "lobby:srv{u}"]})
    s = Script().open("a").call("a", "connect", token=token)
    s.open("b").call("b", "connect", token=Token("bob")).call("b", "publish", channel="lobby:srv{u}", data={"n": 1})
    s.push("a")
    return s.session("connect_with_channels_claim", about="the token's `channels` subscribe the connection itself")


def _connect_with_subs_claim() -> Session:
    token = Token("alice", claims={"subs": {"chat:subs{u}": {"data": {"welcome": True}}}})
    s = Script().open("a").call("a", "connect", token=token)
    return s.session("connect_with_subs_claim")


def _refresh() -> Session:
    s = Script().open("a").call("a", "connect", token=Token("alice", ttl=60))
    s.call("a", "refresh", token=Token("alice", ttl=120))
    return s.session("refresh")


def _refresh_expired() -> Session:
    s = Script().open("a").call("a", "connect", token=Token("alice", ttl=60))
    s.call("a", "refresh", token=Token("alice", ttl=-5))
    return s.session("refresh_expired_token")


def _refresh_other_user() -> Session:
    s = Script().open("a").call("a", "connect", token=Token("alice", ttl=60))
    s.call("a", "refresh", token=Token("bob", ttl=120))
    return s.session("refresh_other_user")


def _refresh_bad_token() -> Session:
    s = Script().open("a").call("a", "connect", token=Token("alice", ttl=60))
    s.call("a", "refresh", token=Token("alice", secret=OTHER_SECRET))
    return s.session("refresh_bad_token")


def _connection_expires() -> Session:
    s = Script().open("a").call("a", "connect", token=Token("alice", ttl=1)).closed("a")
    return s.session("connection_expires", about="exp passes without a refresh: closed after the grace")


def _ping_pong() -> Session:
    s = Script().connect("a").ping("a").ping("a").call("a", "publish", channel="lobby{u}", data={"alive": True})
    return s.session("server_pings_answered")


def _no_pong() -> Session:
    s = Script().open("a", pong=False).call("a", "connect", token=Token("alice")).ping("a").closed("a")
    return s.session("server_ping_unanswered")


def _rpc() -> Session:
    s = Script().connect("a")
    s.call("a", "rpc", method="echo", data={"x": 1})
    s.call("a", "rpc", data={"x": 1})
    return s.session("rpc_without_backend", short=True, about="no rpc proxy (Centrifugo) / no backend (Meshcast)")


def _send() -> Session:
    s = Script().connect("a").send("a", {"send": {"data": {"hello": 1}}}).quiet("a")
    s.call("a", "publish", channel="lobby{u}", data={"after": "send"})
    return s.session("send_has_no_reply")


def _bad_json() -> Session:
    s = Script().connect("a").send("a", Raw("{not json")).closed("a")
    return s.session("bad_json_frame", formats=(Format.JSON,), short=True)


def _bad_json_before_connect() -> Session:
    s = Script().open("a").send("a", Raw("[1, 2")).closed("a")
    return s.session("bad_json_before_connect", formats=(Format.JSON,))


def _json_not_an_object() -> Session:
    s = Script().connect("a").send("a", Raw('"a string"')).closed("a")
    return s.session("json_frame_not_an_object", formats=(Format.JSON,))


def _bad_protobuf() -> Session:
    s = Script().connect("a").send("a", Raw(b"\x05\xff\xff\xff\xff\xff")).closed("a")
    return s.session("bad_protobuf_frame", formats=(Format.PROTOBUF,), short=True)


def _unknown_method_json() -> Session:
    s = Script().connect("a").send("a", {"id": 2, "frobnicate": {}}).reply("a", 2)
    return s.session("unknown_method", formats=(Format.JSON,), short=True)


def _unknown_method_protobuf() -> Session:
    # Command{id: 2, field 50: empty message}: a method this schema does not know.
    s = Script().connect("a").send("a", Raw(b"\x05\x08\x02\x92\x03\x00")).reply("a", 2)
    return s.session("unknown_method", formats=(Format.PROTOBUF,))


def _command_without_method() -> Session:
    s = Script().connect("a").send("a", {"id": 2}).reply("a", 2)
    return s.session("command_without_method")


def _command_without_id() -> Session:
    s = Script().connect("a").send("a", {"publish": {"channel": "lobby{u}", "data": {}}}).quiet("a")
    return s.session("command_without_id")


def _several_commands_in_one_frame() -> Session:
    s = Script().open("a")
    s.send(
        "a",
        [
            {"id": 1, "connect": {"token": Token("alice")}},
            {"id": 2, "subscribe": {"channel": "chat:batch{u}"}},
            {"id": 3, "publish": {"channel": "chat:batch{u}", "data": {"n": 1}}},
        ],
    )
    s.reply("a", 1).reply("a", 2).reply("a", 3).push("a")
    return s.session("several_commands_in_one_frame", short=True)


def _message_too_big() -> Session:
    s = Script().connect("a").call("a", "publish", channel="lobby{u}", data={"big": "x" * 70000}).closed("a")
    return s.session("message_too_big")


SESSIONS = [
    _connect_ok(),
    _ping_command(),
    _unsolicited_pong(),
    _connect_without_token(),
    _connect_expired(),
    _connect_after_error(),
    _connect_bad_signature(),
    _connect_malformed_token(),
    _connect_without_exp(),
    _connect_anonymous_token(),
    _connect_token_expire_at(),
    _connect_recovers_server_side_subscriptions(),
    _connect_twice(),
    _command_before_connect(),
    _connect_with_server_side_subscriptions(),
    _connect_with_subs_claim(),
    _refresh(),
    _refresh_expired(),
    _refresh_other_user(),
    _refresh_bad_token(),
    _connection_expires(),
    _ping_pong(),
    _no_pong(),
    _rpc(),
    _send(),
    _bad_json(),
    _bad_json_before_connect(),
    _json_not_an_object(),
    _bad_protobuf(),
    _unknown_method_json(),
    _unknown_method_protobuf(),
    _command_without_method(),
    _command_without_id(),
    _several_commands_in_one_frame(),
    _message_too_big(),
]
