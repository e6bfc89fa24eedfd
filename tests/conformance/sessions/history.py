"""history (limit, since, reverse paging) and recovery: positions, stale epochs, trimmed history."""

from __future__ import annotations

from typing import Any

from ..script import Script, Session, Token, Var

STALE_EPOCH = "stale-epoch"


def _publish(s: Script, client: str, channel: str, count: int) -> Script:
    for n in range(1, count + 1):
        s.call(client, "publish", channel=channel, data={"n": n})
    return s


def _history_paging() -> Session:
    ch = "chat:h{u}"
    s = Script().connect("a")
    _publish(s, "a", ch, 5)
    s.call(
        "a",
        "history",
        channel=ch,
        limit=2,
        capture={"offset": "history.publications.1.offset", "epoch": "history.epoch"},
    )
    s.call("a", "history", channel=ch, limit=2, since={"offset": Var("offset", 0), "epoch": Var("epoch")})
    s.call("a", "history", channel=ch, limit=2, reverse=True)
    s.call("a", "history", channel=ch, limit=2, reverse=True, since={"offset": Var("offset", 0), "epoch": Var("epoch")})
    s.call("a", "history", channel=ch, limit=0)
    s.call("a", "history", channel=ch, limit=-1)
    s.call("a", "history", channel=ch)
    return s.session("history_paging", short=True, about="limit, since and reverse over five publications")


def _history_over_the_limit() -> Session:
    ch = "stream:big{u}"
    batch = [{"publish": {"channel": ch, "data": {"n": n}}} for n in range(305)]
    s = Script().api("batch", {"commands": batch}).connect("a")
    s.call("a", "history", channel=ch, limit=-1)
    s.call("a", "history", channel=ch, limit=1000, reverse=True)
    s.call("a", "history", channel=ch, limit=300)
    return s.session("history_over_the_publication_limit", about="305 publications; limits -1, 1000 and 300")


def _history_empty_channel() -> Session:
    s = Script().connect("a").call("a", "history", channel="chat:empty{u}", limit=10)
    return s.session("history_empty_channel")


def _history_not_available() -> Session:
    s = Script().connect("a").call("a", "history", channel="room:nohist{u}", limit=10)
    s.call("a", "history", channel="lobby{u}", limit=10)
    return s.session("history_without_history", short=True, about="namespaces without history_size")


def _history_stale_epoch() -> Session:
    ch = "chat:se{u}"
    s = Script().connect("a")
    _publish(s, "a", ch, 2)
    s.call("a", "history", channel=ch, limit=1, since={"offset": 1, "epoch": STALE_EPOCH})
    return s.session("history_stale_epoch", short=True)


def _history_since_trimmed() -> Session:
    ch = "tiny:t{u}"
    s = Script().connect("a")
    s.call("a", "publish", channel=ch, data={"n": 0})
    s.call(
        "a",
        "history",
        channel=ch,
        limit=1,
        capture={"offset": "history.publications.0.offset", "epoch": "history.epoch"},
    )
    _publish(s, "a", ch, 7)
    s.call("a", "history", channel=ch, limit=10, since={"offset": Var("offset", 0), "epoch": Var("epoch")})
    s.call("a", "history", channel=ch, limit=-1)
    return s.session("history_since_trimmed", about="history_size 5: the position fell out of the window")


def _history_since_future() -> Session:
    ch = "chat:fut{u}"
    s = Script().connect("a")
    s.call("a", "publish", channel=ch, data={"n": 1})
    s.call("a", "history", channel=ch, limit=0, capture={"epoch": "history.epoch"})
    s.call("a", "history", channel=ch, limit=10, since={"offset": 1000000, "epoch": Var("epoch")})
    return s.session("history_since_beyond_the_end")


def _history_of_unsubscribed_private_and_limited() -> Session:
    s = Script().connect("a")
    s.call("a", "history", channel="closed:x{u}", limit=1)
    s.call("a", "history", channel="chat:dm{u}#bob", limit=1)
    return s.session("history_permissions", about="a namespace nobody may subscribe to; another user's channel")


def _subscribe_positions() -> Session:
    s = Script().connect("a")
    s.call("a", "publish", channel="log:p{u}", data={"n": 1})
    s.call("a", "subscribe", channel="log:p{u}")
    s.call("a", "subscribe", channel="log:q{u}", positioned=True)
    s.call("a", "subscribe", channel="chat:p{u}")
    s.call("a", "subscribe", channel="tiny:p{u}", recoverable=True)
    return s.session("subscribe_positions", about="history with and without recovery; positioned/recoverable flags")


def _recovery(
    name: str, namespace: str, missed: int, *, epoch: str | None = None, flag: int = 0, short: bool = False
) -> Session:
    """`a` gets one publication, goes away while `b` publishes `missed` more, and comes back as
    `a2` recovering from the last offset it got (as SDKs do); then one live publication."""
    ch = f"{namespace}:rec{{u}}"
    s = Script().connect("a").connect("b", "bob", token=Token("bob"))
    s.call("a", "subscribe", channel=ch, capture={"epoch": "subscribe.epoch", "offset": "subscribe.offset"})
    s.call("a", "publish", channel=ch, data={"n": 0}).push("a", capture={"offset": "push.pub.offset"})
    s.close("a")
    _publish(s, "b", ch, missed)
    s.connect("a2")
    request: dict[str, Any] = {
        "channel": ch,
        "recover": True,
        "epoch": Var("epoch") if epoch is None else epoch,
        "offset": Var("offset", 0),
    }
    if flag:
        request["flag"] = flag
    s.call("a2", "subscribe", **request)
    s.call("b", "publish", channel=ch, data={"n": "live"})
    s.push("a2")
    return s.session(name, short=short)


SESSIONS = [
    _history_paging(),
    _history_empty_channel(),
    _history_over_the_limit(),
    _history_not_available(),
    _history_stale_epoch(),
    _history_since_trimmed(),
    _history_since_future(),
    _history_of_unsubscribed_private_and_limited(),
    _subscribe_positions(),
    _recovery("recover_missed_publications", "chat", 3, short=True),
    _recovery("recover_stale_epoch", "chat", 1, epoch=STALE_EPOCH),
    _recovery("recover_too_far_back", "tiny", 7),
    _recovery("recover_stale_epoch_rejected", "chat", 1, epoch=STALE_EPOCH, flag=2),
    _recovery("recover_too_far_back_rejected", "tiny", 7, flag=2),
    _recovery("recover_nothing_missed", "chat", 0),
    _recovery("recover_without_epoch", "chat", 1, epoch=""),
]
