"""Subject names: injective, reversible, wildcard-proof (property-tested)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcast.bus import Subjects, decode_token, encode_token, namespace_of
from meshcast.bus.channels import allowed_users, is_private
from meshcast.bus.subjects import CHANNEL_EVENT_KINDS, EVENT_KINDS

FORBIDDEN = set(".*> \t\r\n\x00")


@given(st.text())
def test_token_round_trips(name: str) -> None:
    assert decode_token(encode_token(name)) == name


@given(st.text())
def test_token_never_holds_subject_syntax(name: str) -> None:
    token = encode_token(name)
    assert token
    assert not FORBIDDEN & set(token)
    assert token.isascii()


@given(st.text(), st.text())
def test_distinct_channels_get_distinct_subjects(a: str, b: str) -> None:
    subjects = Subjects()
    if a != b:
        assert subjects.live(a) != subjects.live(b)


@given(st.text())
def test_channel_of_inverts_live_input_and_removal(channel: str) -> None:
    subjects = Subjects(prefix="mc.test")
    assert subjects.channel_of(subjects.live(channel)) == channel
    assert subjects.channel_of(subjects.input(channel)) == channel
    assert subjects.channel_of(subjects.removal(channel)) == channel
    assert len(subjects.live(channel).split(".")) == 5
    assert len(subjects.removal(channel).split(".")) == 5


@given(st.text(), st.text())
def test_removal_markers_share_no_subject_with_publications(a: str, b: str) -> None:
    """A channel's removal marker is captured by its namespace's stream, never by
    an input or live subject: nobody who may publish can forge one."""
    subjects = Subjects()
    ns = namespace_of(a)
    marker = subjects.removal(a)
    assert marker not in (subjects.input(b), subjects.live(b))
    assert marker.startswith(subjects.removal_wildcard(ns)[:-1])
    assert not marker.startswith(subjects.input_wildcard(ns)[:-1])
    assert (subjects.removal(a) == subjects.removal(b)) == (a == b)


def test_subject_layout() -> None:
    subjects = Subjects()
    assert subjects.live("chat:room.1") == "meshcast.live.chat.chat~3Aroom~2E1"
    assert subjects.live("lobby") == "meshcast.live.~.lobby"
    assert subjects.input("chat:x") == "meshcast.in.chat.chat~3Ax"
    assert subjects.input_wildcard("chat") == "meshcast.in.chat.*"
    assert subjects.removal("chat:x") == "meshcast.removed.chat.chat~3Ax"
    assert subjects.removal_wildcard("chat") == "meshcast.removed.chat.*"
    assert subjects.control == "meshcast.control"


@pytest.mark.parametrize("token", ["a.b", "*", ">", "~4", "~zz", "a b", "~3a", ""])
def test_invalid_tokens_are_rejected(token: str) -> None:
    with pytest.raises(ValueError, match="token"):
        decode_token(token)


@pytest.mark.parametrize(
    "subject",
    ["other.live.~.a", "meshcast.live.a", "meshcast.pub.~.a", "meshcast.live.chat.lobby", "meshcast.live.~.a.b"],
)
def test_foreign_subjects_are_not_channels(subject: str) -> None:
    with pytest.raises(ValueError, match=r"subject|token"):
        Subjects().channel_of(subject)


@pytest.mark.parametrize("prefix", ["", "a..b", "a.*", "a b", ".a"])
def test_invalid_prefix_is_rejected(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        Subjects(prefix=prefix)


def test_channel_grammar() -> None:
    assert namespace_of("chat:a:b") == "chat"
    assert namespace_of("$chat:secret") == "chat"
    assert namespace_of("lobby") == ""
    assert is_private("$chat:x")
    assert not is_private("chat:$x")
    assert allowed_users("dialog#42,43") == frozenset({"42", "43"})
    assert allowed_users("chat:a") is None


@given(st.sampled_from(CHANNEL_EVENT_KINDS), st.text())
def test_event_subjects_round_trip_and_hold_one_channel_token(kind: str, channel: str) -> None:
    subjects = Subjects(prefix="mc.test")
    subject = subjects.event(kind, channel)
    assert subjects.event_of(subject) == (kind, channel)
    assert subject.startswith(subjects.events_wildcard(kind)[:-1])
    assert len(subject.split(".")) == 7


def test_event_subject_layout() -> None:
    subjects = Subjects()
    assert subjects.event("connect") == "meshcast.events.v1.connect"
    assert subjects.event("gateway_expired") == "meshcast.events.v1.gateway_expired"
    assert subjects.event("subscribe", "chat:x") == "meshcast.events.v1.subscribe.chat.chat~3Ax"
    assert subjects.event("channel_vacated", "lobby") == "meshcast.events.v1.channel_vacated.~.lobby"
    assert subjects.events_wildcard() == "meshcast.events.v1.>"
    assert subjects.events_wildcard("disconnect") == "meshcast.events.v1.disconnect"
    assert subjects.events_wildcard("unsubscribe") == "meshcast.events.v1.unsubscribe.>"
    assert subjects.events_stream == "MESHCAST_EVENTS"
    assert Subjects(prefix="acme.eu-1").events_stream == "ACME_EU_1_EVENTS"
    assert subjects.event_of("meshcast.events.v1.disconnect") == ("disconnect", None)
    assert set(EVENT_KINDS) == set(CHANNEL_EVENT_KINDS) | {"connect", "disconnect", "gateway_expired"}


@pytest.mark.parametrize(
    ("kind", "channel"), [("connect", "x"), ("subscribe", None), ("nope", None), ("disconnect.x", None)]
)
def test_events_take_a_channel_exactly_when_their_kind_has_one(kind: str, channel: str | None) -> None:
    with pytest.raises(ValueError, match="event kind"):
        Subjects().event(kind, channel)


@pytest.mark.parametrize(
    "subject",
    [
        "meshcast.events.v1.connect.x",
        "meshcast.events.v1.subscribe.~",
        "meshcast.events.v1.subscribe.chat.lobby",
        "meshcast.events.v2.connect",
        "meshcast.events.v1.other",
    ],
)
def test_foreign_subjects_are_not_events(subject: str) -> None:
    with pytest.raises(ValueError, match=r"subject|token"):
        Subjects().event_of(subject)
