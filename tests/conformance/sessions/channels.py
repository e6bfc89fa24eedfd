"""subscribe, unsubscribe, publish and sub_refresh: permissions, limits, `$` and `#` channels."""

from __future__ import annotations

from ..script import OTHER_SECRET, Script, Session, Token


def _subscribe_publish_unsubscribe() -> Session:
    s = Script().connect("a", "alice", token=Token("alice", claims={"info": {"name": "Alice"}}))
    s.call("a", "subscribe", channel="chat:room{u}")
    s.call("a", "publish", channel="chat:room{u}", data={"text": "hi"}).push("a")
    s.call("a", "unsubscribe", channel="chat:room{u}")
    s.call("a", "publish", channel="chat:room{u}", data={"text": "gone"}).quiet("a")
    return s.session("subscribe_publish_unsubscribe", short=True)


def _publication_to_other_subscribers() -> Session:
    s = Script().connect("a").connect("b", "bob", token=Token("bob", claims={"info": {"role": "writer"}}))
    s.call("a", "subscribe", channel="lobby{u}")
    s.call("b", "publish", channel="lobby{u}", data={"from": "bob"}).push("a").quiet("b")
    return s.session("publication_reaches_subscribers", about="default namespace: no history, publisher info")


def _unknown_namespace() -> Session:
    s = Script().connect("a")
    s.call("a", "subscribe", channel="nope:x{u}")
    s.call("a", "publish", channel="nope:x{u}", data={"x": 1})
    s.call("a", "history", channel="nope:x{u}")
    s.call("a", "presence", channel="nope:x{u}")
    return s.session("unknown_namespace", short=True)


def _already_subscribed() -> Session:
    s = Script().connect("a").call("a", "subscribe", channel="lobby{u}").call("a", "subscribe", channel="lobby{u}")
    return s.session("already_subscribed")


def _subscribe_without_channel() -> Session:
    s = Script().connect("a").call("a", "subscribe")
    return s.session("subscribe_without_channel")


def _publish_not_allowed() -> Session:
    s = Script().connect("a").call("a", "publish", channel="readonly:x{u}", data={"x": 1})
    s.call("a", "subscribe", channel="readonly:x{u}").call("a", "publish", channel="readonly:x{u}", data={"x": 2})
    return s.session("publish_not_allowed", short=True, about="subscribed or not")


def _publish_without_data() -> Session:
    s = Script().connect("a").call("a", "publish", channel="lobby{u}")
    return s.session("publish_without_data")


def _publish_without_channel() -> Session:
    s = Script().connect("a").call("a", "publish", data={"x": 1})
    return s.session("publish_without_channel")


def _too_many_channels() -> Session:
    s = Script().connect("a")
    for i in range(5):
        s.call("a", "subscribe", channel=f"lobby{i}{{u}}")
    s.call("a", "unsubscribe", channel="lobby0{u}").call("a", "subscribe", channel="lobby9{u}")
    return s.session("too_many_channels", short=True, about="channel_limit 4")


def _subscribe_options() -> Session:
    s = Script().connect("a")
    s.call("a", "subscribe", channel="chat:delta{u}", delta="fossil")
    s.call("a", "subscribe", channel="chat:data{u}", data={"hello": True})
    s.call("a", "subscribe", channel="chat:bogus{u}", delta="bogus")
    return s.session("subscribe_options", about="delta (not allowed in the namespace), data, an unknown delta")


def _unsubscribe_not_subscribed() -> Session:
    s = Script().connect("a").call("a", "unsubscribe", channel="lobby{u}")
    return s.session("unsubscribe_not_subscribed")


def _private_without_token() -> Session:
    s = Script().connect("a")
    s.call("a", "subscribe", channel="$chat:secret{u}")
    s.call("a", "publish", channel="$chat:secret{u}", data={"x": 1})
    s.call("a", "history", channel="$chat:secret{u}")
    s.call("a", "presence", channel="$chat:secret{u}")
    return s.session("private_channel_without_token", short=True)


def _private_with_token() -> Session:
    channel = "$chat:secret{u}"
    s = Script().connect("a")
    s.call("a", "subscribe", channel=channel, token=Token("alice", channel=channel, claims={"info": {"seat": 1}}))
    s.call("a", "publish", channel=channel, data={"x": 1}).push("a")
    s.call("a", "presence", channel=channel)
    return s.session("private_channel_with_token", short=True)


def _subscription_token_expired() -> Session:
    s = Script().connect("a")
    s.call("a", "subscribe", channel="$lobby:s{u}", token=Token("alice", channel="$lobby:s{u}", ttl=-10))
    return s.session("subscription_token_expired", short=True)


def _subscription_token_forged() -> Session:
    s = Script().connect("a")
    s.call("a", "subscribe", channel="$lobby:s{u}", token=Token("alice", channel="$lobby:s{u}", secret=OTHER_SECRET))
    return s.session("subscription_token_bad_signature")


def _subscription_token_malformed() -> Session:
    s = Script().connect("a").call("a", "subscribe", channel="$lobby:s{u}", token="not-a-jwt")
    return s.session("subscription_token_malformed")


def _subscription_token_for_another_channel() -> Session:
    s = Script().connect("a")
    s.call("a", "subscribe", channel="$lobby:s{u}", token=Token("alice", channel="$lobby:other{u}"))
    return s.session("subscription_token_other_channel")


def _subscription_token_for_another_user() -> Session:
    s = Script().connect("a")
    s.call("a", "subscribe", channel="$lobby:s{u}", token=Token("bob", channel="$lobby:s{u}"))
    return s.session("subscription_token_other_user")


def _subscription_token_opens_closed_namespace() -> Session:
    s = Script().connect("a")
    s.call("a", "subscribe", channel="closed:x{u}")
    s.call("a", "subscribe", channel="closed:x{u}", token=Token("alice", channel="closed:x{u}"))
    return s.session("subscription_token_opens_closed_namespace")


def _sub_refresh() -> Session:
    channel = "$lobby:r{u}"
    s = Script().connect("a")
    s.call("a", "subscribe", channel=channel, token=Token("alice", channel=channel, ttl=60))
    s.call("a", "sub_refresh", channel=channel, token=Token("alice", channel=channel, ttl=120))
    s.call("a", "sub_refresh", channel=channel, token=Token("alice", channel=channel, ttl=-5))
    return s.session("sub_refresh")


def _sub_refresh_errors() -> Session:
    s = Script().connect("a")
    s.call("a", "sub_refresh", channel="$lobby:n{u}", token=Token("alice", channel="$lobby:n{u}"))
    s.call("a", "sub_refresh", channel="$lobby:n{u}")
    return s.session("sub_refresh_not_subscribed")


def _subscription_expires() -> Session:
    channel = "$lobby:e{u}"
    s = Script().connect("a")
    s.call("a", "subscribe", channel=channel, token=Token("alice", channel=channel, ttl=1)).push("a")
    return s.session("subscription_expires", about="exp passes without a sub_refresh")


def _user_limited() -> Session:
    channel = "chat:dm{u}#alice,bob"
    s = Script().connect("a").connect("c", "carol", token=Token("carol"))
    s.call("a", "subscribe", channel=channel)
    s.call("c", "subscribe", channel=channel)
    s.call("c", "publish", channel=channel, data={"x": 1})
    s.call("c", "history", channel=channel)
    s.call("a", "publish", channel=channel, data={"x": 2}).push("a")
    return s.session("user_limited_channel", short=True)


def _channel_names() -> Session:
    s = Script().connect("a")
    s.call("a", "subscribe", channel="strict:abc{u}")
    s.call("a", "subscribe", channel="strict:ABC{u}")
    s.call("a", "subscribe", channel="lobby\u00e9{u}")
    s.call("a", "subscribe", channel="lobby" + "x" * 260)
    s.call("a", "subscribe", channel="chat:")
    return s.session("channel_names", about="a namespace's regex, non-ASCII, too long, empty name")


def _join_leave() -> Session:
    s = Script().connect("a").connect("b", "bob", token=Token("bob"))
    s.call("a", "subscribe", channel="room:jl{u}").push("a")
    s.call("b", "subscribe", channel="room:jl{u}").push("a").push("b")
    s.call("b", "unsubscribe", channel="room:jl{u}").push("a")
    return s.session("join_leave_forced", short=True, about="force_push_join_leave")


def _join_leave_asked() -> Session:
    s = Script().connect("a").connect("b", "bob", token=Token("bob"))
    s.call("a", "subscribe", channel="chat:jl{u}", join_leave=True).push("a")
    s.call("b", "subscribe", channel="chat:jl{u}").push("a").quiet("b")
    s.close("b").push("a")
    return s.session("join_leave_asked", about="join_leave in the subscribe request; leave on disconnect")


SESSIONS = [
    _subscribe_publish_unsubscribe(),
    _publication_to_other_subscribers(),
    _unknown_namespace(),
    _already_subscribed(),
    _subscribe_without_channel(),
    _publish_not_allowed(),
    _publish_without_data(),
    _publish_without_channel(),
    _too_many_channels(),
    _subscribe_options(),
    _unsubscribe_not_subscribed(),
    _private_without_token(),
    _private_with_token(),
    _subscription_token_expired(),
    _subscription_token_forged(),
    _subscription_token_malformed(),
    _subscription_token_for_another_channel(),
    _subscription_token_for_another_user(),
    _subscription_token_opens_closed_namespace(),
    _sub_refresh(),
    _sub_refresh_errors(),
    _subscription_expires(),
    _user_limited(),
    _channel_names(),
    _join_leave(),
    _join_leave_asked(),
]
