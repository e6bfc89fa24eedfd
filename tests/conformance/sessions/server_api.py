"""The server API over HTTP: every method, with a client watching what it does; error codes,
envelopes and the statuses of requests that never reach a method."""

from __future__ import annotations

import json

from meshcast.protocol import Format

from ..script import At, Script, Session, Token

JSON_ONLY = (Format.JSON,)


def _publish_and_history() -> Session:
    ch = "chat:api{u}"
    s = Script().connect("a").call("a", "subscribe", channel=ch)
    s.api("publish", {"channel": ch, "data": {"n": 1}}).push("a")
    s.api("publish", {"channel": ch, "data": {"n": 2}, "tags": {"k": "v"}}).push("a")
    s.api("publish", {"channel": ch, "data": {"n": 3}, "idempotency_key": "k{u}"}).push("a")
    s.api("publish", {"channel": ch, "data": {"n": 3}, "idempotency_key": "k{u}"}).quiet("a")
    s.api("history", {"channel": ch, "limit": -1}, capture={"epoch": "result.epoch"})
    s.api("history", {"channel": ch, "limit": 1, "reverse": True})
    s.api("history", {"channel": ch, "limit": 1, "since": {"offset": 1, "epoch": "stale"}})
    s.api("history", {"channel": ch, "limit": 0})
    return s.session("api_publish_and_history", formats=JSON_ONLY, short=True)


def _publish_errors() -> Session:
    s = Script()
    s.api("publish", {"channel": "nope:x{u}", "data": {}})
    s.api("publish", {"data": {"x": 1}})
    s.api("publish", {"channel": "lobby{u}"})
    s.api("publish", {"channel": "lobby{u}", "data": {}, "skip_history": True})
    s.api("publish", {"channel": "chat:skip{u}", "data": {}, "skip_history": True})
    s.api("history", {"channel": "lobby{u}"})
    s.api("history", {"channel": "nope:x{u}"})
    return s.session("api_publish_errors", formats=JSON_ONLY, short=True)


def _publish_b64data() -> Session:
    ch = "chat:b64{u}"
    s = Script().connect("a").call("a", "subscribe", channel=ch)
    s.api("publish", {"channel": ch, "b64data": "eyJuIjogMX0="}).push("a")
    s.api("publish", {"channel": ch, "data": {"n": 2}, "b64data": "eyJuIjogMX0="})
    s.api("publish", {"channel": ch, "b64data": "not base64!"})
    return s.session("api_publish_b64data", formats=JSON_ONLY)


def _broadcast() -> Session:
    s = Script().connect("a").call("a", "subscribe", channel="lobby:b1{u}").call("a", "subscribe", channel="chat:b2{u}")
    s.api("broadcast", {"channels": ["lobby:b1{u}", "chat:b2{u}", "nope:b3{u}"], "data": {"all": True}})
    s.pushes("a", 2)
    s.api("broadcast", {"channels": [], "data": {}})
    s.api("broadcast", {"channels": ["lobby:b1{u}"]})
    return s.session("api_broadcast", formats=JSON_ONLY)


def _server_subscribe() -> Session:
    ch = "chat:srv{u}"
    s = Script().connect("a", "alice{u}", token=Token("alice{u}"))
    s.api("subscribe", {"user": "alice{u}", "channel": ch}).push("a")
    s.api("publish", {"channel": ch, "data": {"after": "subscribe"}}).push("a")
    s.api("subscribe", {"user": "alice{u}", "channel": "nope:x{u}"})
    s.api("subscribe", {"user": "nobody{u}", "channel": ch})
    s.api("unsubscribe", {"user": "alice{u}", "channel": ch}).push("a")
    s.api("unsubscribe", {"user": "nobody{u}", "channel": ch})
    return s.session("api_subscribe_unsubscribe", formats=JSON_ONLY, short=True)


def _disconnect() -> Session:
    s = Script().connect("a", "alice{u}", token=Token("alice{u}")).connect("b", "bob{u}", token=Token("bob{u}"))
    s.api("disconnect", {"user": "alice{u}"}).closed("a")
    s.api("disconnect", {"user": "bob{u}", "disconnect": {"code": 4001, "reason": "go away"}}).closed("b")
    s.api("disconnect", {"user": "nobody{u}"})
    return s.session("api_disconnect", formats=JSON_ONLY)


def _refresh() -> Session:
    s = Script().connect("a", "alice{u}", token=Token("alice{u}", ttl=60))
    s.connect("b", "bob{u}", token=Token("bob{u}", ttl=60))
    s.api("refresh", {"user": "alice{u}", "expire_at": At(3600)}).push("a")
    s.api("refresh", {"user": "alice{u}", "expire_at": 4102444800}).push("a")
    s.api("refresh", {"user": "bob{u}", "expired": True}).closed("b")
    return s.session("api_refresh", formats=JSON_ONLY)


def _presence() -> Session:
    ch = "chat:ap{u}"
    s = Script().connect("a", "alice{u}", token=Token("alice{u}", claims={"info": {"n": 1}}))
    s.call("a", "subscribe", channel=ch).sleep(1.0)
    s.api("presence", {"channel": ch}).api("presence_stats", {"channel": ch})
    s.api("presence", {"channel": "lobby{u}"}).api("presence_stats", {"channel": "nope:x{u}"})
    s.api("presence", {"channel": "chat:empty{u}"}).api("presence_stats", {"channel": "chat:empty{u}"})
    return s.session("api_presence", formats=JSON_ONLY, short=True)


def _history_remove() -> Session:
    ch = "chat:rm{u}"
    s = Script()
    s.api("publish", {"channel": ch, "data": {"n": 1}}).api("publish", {"channel": ch, "data": {"n": 2}})
    s.api("history_remove", {"channel": ch})
    s.api("history", {"channel": ch, "limit": -1})
    s.api("publish", {"channel": ch, "data": {"n": 3}})
    s.api("history", {"channel": ch, "limit": -1})
    s.api("history_remove", {"channel": "lobby{u}"})
    return s.session("api_history_remove", formats=JSON_ONLY)


def _channels() -> Session:
    s = Script().connect("a").connect("b", "bob", token=Token("bob"))
    s.call("a", "subscribe", channel="chat:c1{u}").call("b", "subscribe", channel="chat:c1{u}")
    s.call("a", "subscribe", channel="lobby:c2{u}").sleep(0.3)
    s.api("channels", {"pattern": "*{u}"})
    s.api("channels", {"pattern": "chat:*{u}"})
    s.api("channels", {"pattern": "nothing-matches{u}"})
    return s.session("api_channels", formats=JSON_ONLY)


def _info() -> Session:
    s = Script().api("info")
    return s.session("api_info", formats=JSON_ONLY)


def _batch() -> Session:
    ch = "lobby:batch{u}"
    s = Script().connect("a").call("a", "subscribe", channel=ch)
    commands = [
        {"publish": {"channel": ch, "data": {"n": 1}}},
        {"history": {"channel": ch}},
        {"presence_stats": {"channel": ch}},
        {"publish": {"channel": "nope:x{u}", "data": {}}},
    ]
    s.api("batch", {"commands": commands}).push("a")
    s.api("batch", {"commands": commands[:1], "parallel": True}).push("a")
    s.api("batch", {"commands": []})
    return s.session("api_batch", formats=JSON_ONLY)


def _http_errors() -> Session:
    s = Script()
    s.api("info", headers={})
    s.api("info", headers={"X-API-Key": "wrong"})
    s.api("info", headers={"Authorization": "apikey " + "{key}"})
    s.api("frobnicate")
    s.api("info", verb="GET", body=None)
    s.api("publish", b"")
    s.api("publish", b"{not json")
    s.api("publish", b"[1, 2]")
    s.api("publish", {"channel": 7, "data": {}})
    s.api("publish", {"channel": "lobby{u}", "data": {}, "unknown_field": 1})
    return s.session("api_http_errors", formats=JSON_ONLY, short=True)


def _legacy_commands() -> Session:
    ch = "lobby:legacy{u}"
    lines = [
        {"method": "publish", "params": {"channel": ch, "data": {"n": 1}}},
        {"method": "presence_stats", "params": {"channel": ch}},
    ]
    s = Script().connect("a").call("a", "subscribe", channel=ch)
    s.api("", "\n".join(json.dumps(line) for line in lines).encode()).push("a")
    s.api("", json.dumps({"method": "frobnicate", "params": {}}).encode())
    s.api("", json.dumps({"method": "publish", "params": {"channel": 5}}).encode())
    return s.session("api_legacy_commands", formats=JSON_ONLY)


SESSIONS = [
    _publish_and_history(),
    _publish_errors(),
    _publish_b64data(),
    _broadcast(),
    _server_subscribe(),
    _disconnect(),
    _refresh(),
    _presence(),
    _history_remove(),
    _channels(),
    _info(),
    _batch(),
    _http_errors(),
    _legacy_commands(),
]
