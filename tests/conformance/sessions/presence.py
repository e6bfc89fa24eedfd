"""presence and presence_stats: subscribers, others, namespaces without presence."""

from __future__ import annotations

from ..script import Script, Session, Token


def _presence() -> Session:
    ch = "chat:pr{u}"
    s = Script().connect("a", token=Token("alice", claims={"info": {"name": "Alice"}}))
    s.connect("b", "bob", token=Token("bob"))
    s.call("a", "subscribe", channel=ch).call("b", "subscribe", channel=ch)
    s.sleep(1.0)
    s.call("a", "presence", channel=ch).call("a", "presence_stats", channel=ch)
    s.call("b", "unsubscribe", channel=ch).sleep(1.0)
    s.call("a", "presence", channel=ch).call("a", "presence_stats", channel=ch)
    return s.session("presence", short=True, about="two subscribers, then one")


def _presence_same_user_twice() -> Session:
    ch = "lobby:twice{u}"
    s = Script().connect("a").connect("a2")
    s.call("a", "subscribe", channel=ch).call("a2", "subscribe", channel=ch).sleep(1.0)
    s.call("a", "presence_stats", channel=ch)
    return s.session("presence_stats_counts_users_once")


def _presence_not_subscribed() -> Session:
    s = Script().connect("a")
    s.call("a", "presence", channel="chat:nosub{u}").call("a", "presence_stats", channel="chat:nosub{u}")
    s.call("a", "presence", channel="lobby:open{u}").call("a", "presence_stats", channel="lobby:open{u}")
    return s.session("presence_without_subscribing", about="chat: subscribers only; lobby allows it")


def _presence_not_available() -> Session:
    s = Script().connect("a").call("a", "subscribe", channel="log:np{u}")
    s.call("a", "presence", channel="log:np{u}").call("a", "presence_stats", channel="log:np{u}")
    s.call("a", "presence", channel="lobby{u}")
    return s.session("presence_not_enabled", short=True)


SESSIONS = [
    _presence(),
    _presence_same_user_twice(),
    _presence_not_subscribed(),
    _presence_not_available(),
]
