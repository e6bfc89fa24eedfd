"""The webhook relay's pure rules: body and signature, backoff, per-key order, shards, settings."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from meshcast.bus import Subjects
from meshcast.common.settings import ConfigError
from meshcast.proto.events_pb2 import Connect, Disconnect, Event, GatewayExpired, Subscribe
from meshcast.webhooks.lanes import Lanes, ordering_key, retry_delay, shard_of
from meshcast.webhooks.settings import WebhookSettings
from meshcast.webhooks.signing import SIGNATURE_HEADER, event_body, post_headers, signature, verify

SECRET = b"webhook-secret-0123456789"


def connect(client: str = "c1", user: str = "alice") -> Event:
    return Event(time_ms=1_700_000_000_123, gateway="gw-1", connect=Connect(user=user, client=client))


def subscribe(channel: str, client: str = "c1") -> Event:
    return Event(gateway="gw-1", subscribe=Subscribe(user="alice", client=client, channel=channel))


def test_the_body_is_the_event_as_proto_json_with_schema_names_kind_id_and_seq() -> None:
    body = json.loads(event_body(connect(), event_id="connect:c1", seq=7))
    assert body["kind"] == "connect"
    assert body["id"] == "connect:c1"
    assert body["seq"] == 7
    assert body["connect"]["user"] == "alice"
    assert body["connect"]["client"] == "c1"
    assert body["time_ms"] == "1700000000123"  # int64 as protobuf JSON writes it
    assert body["connect"]["transport"] == ""  # every field present, defaults too


def test_the_signature_is_hmac_sha256_of_the_exact_body_in_hex() -> None:
    body = event_body(subscribe("chat:room"), event_id="subscribe:gw-1:1", seq=1)
    expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    assert signature(SECRET, body) == expected
    assert verify(SECRET, body, expected)
    assert not verify(SECRET, body + b" ", expected)
    assert not verify(b"another-secret-0123456", body, expected)
    headers = post_headers(SECRET, body, event_id="subscribe:gw-1:1", kind="subscribe", attempt=3)
    assert headers[SIGNATURE_HEADER] == expected
    assert headers["X-Meshcast-Event-Id"] == "subscribe:gw-1:1"
    assert headers["X-Meshcast-Delivery-Attempt"] == "3"
    assert headers["Content-Type"] == "application/json"


def test_backoff_doubles_from_the_first_delay_up_to_its_cap() -> None:
    delays = [retry_delay(n, initial=0.5, cap=4.0) for n in range(1, 7)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert retry_delay(10_000, initial=0.5, cap=4.0) == 4.0


def test_backoff_jitter_takes_off_at_most_half() -> None:
    assert retry_delay(3, initial=1.0, cap=60.0, jitter=0.5) == 2.0
    assert retry_delay(3, initial=1.0, cap=60.0, jitter=0.0) == 2.0  # clamped to half
    assert retry_delay(3, initial=1.0, cap=60.0, jitter=0.75) == 3.0
    with pytest.raises(ValueError, match="from 1"):
        retry_delay(0, initial=1.0, cap=2.0)


def test_channel_events_are_ordered_by_channel_others_by_client_then_gateway() -> None:
    assert ordering_key(subscribe("chat:a", client="c1")) == ordering_key(subscribe("chat:a", client="c2"))
    assert ordering_key(subscribe("chat:a")) != ordering_key(subscribe("chat:b"))
    gone = Event(gateway="gw-2", disconnect=Disconnect(client="c1"))
    assert ordering_key(connect("c1")) == ordering_key(gone) == "client:c1"
    assert ordering_key(Event(gateway="gw-9", gateway_expired=GatewayExpired())) == "gateway:gw-9"


def test_shards_split_keys_the_same_way_everywhere() -> None:
    keys = [f"channel:room{n}" for n in range(200)]
    shards = [shard_of(key, 4) for key in keys]
    assert shards == [shard_of(key, 4) for key in keys]
    assert set(shards) == {0, 1, 2, 3}
    assert {shard_of(key, 1) for key in keys} == {0}


def test_a_lane_gives_its_items_in_sequence_order_one_at_a_time() -> None:
    lanes: Lanes[str] = Lanes()
    assert lanes.add("a", 5, "a5") is True  # idle: start a worker
    assert lanes.add("a", 3, "a3") is False  # a worker runs already
    assert lanes.add("a", 9, "a9") is False
    assert len(lanes) == 3
    assert lanes.take("a") == (3, "a3")
    assert lanes.add("a", 4, "a4") is False  # a redelivered older one goes before the rest
    assert lanes.take("a") == (4, "a4")
    assert lanes.take("a") == (5, "a5")
    assert lanes.take("a") == (9, "a9")
    assert lanes.take("a") is None
    assert len(lanes) == 0
    assert lanes.busy() == frozenset()
    assert lanes.add("a", 10, "a10") is True  # idle again: a new worker


def test_keys_are_independent_and_a_copy_is_held_once() -> None:
    lanes: Lanes[str] = Lanes()
    assert lanes.add("a", 1, "a1")
    assert lanes.add("b", 2, "b2")  # its own worker: not behind "a"
    assert lanes.take("a") == (1, "a1")
    assert not lanes.add("a", 1, "a1 again")  # in progress: not twice
    assert not lanes.add("b", 2, "b2 again")  # queued: not twice
    assert sorted(lanes.held()) == ["a1", "b2"]
    assert lanes.busy() == frozenset({"a", "b"})


def _settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> WebhookSettings:
    base = {"MESHCAST_WEBHOOK_URL": "http://127.0.0.1:9999/hook", "MESHCAST_WEBHOOK_SECRET": SECRET.decode()}
    for name, value in {**base, **env}.items():
        monkeypatch.setenv(name, value)
    return WebhookSettings.load()


def test_settings_name_the_kinds_the_consumer_filters_and_its_durable(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(monkeypatch, MESHCAST_WEBHOOK_KINDS="disconnect, connect")
    assert settings.kinds == ("connect", "disconnect")
    assert settings.durable == "webhooks-default"
    assert Subjects().event_filters(settings.kinds) == ["meshcast.events.v1.connect", "meshcast.events.v1.disconnect"]
    sharded = _settings(monkeypatch, MESHCAST_WEBHOOK_SHARDS="3", MESHCAST_WEBHOOK_SHARD="2")
    assert sharded.durable == "webhooks-default-2of3"
    assert len(_settings(monkeypatch, MESHCAST_WEBHOOK_KINDS="").kinds) == 8


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"MESHCAST_WEBHOOK_URL": "ftp://example.com/x"}, "webhook_url"),
        ({"MESHCAST_WEBHOOK_SECRET": "short"}, "webhook_secret"),
        ({"MESHCAST_WEBHOOK_KINDS": "connect,joined"}, "webhook_kinds"),
        ({"MESHCAST_WEBHOOK_MAX_ATTEMPTS": "0"}, "webhook_max_attempts"),
        ({"MESHCAST_WEBHOOK_BACKOFF_INITIAL": "5", "MESHCAST_WEBHOOK_BACKOFF_MAX": "1"}, "webhook_backoff_max"),
        ({"MESHCAST_WEBHOOK_SHARDS": "2", "MESHCAST_WEBHOOK_SHARD": "2"}, "webhook_shard"),
        ({"MESHCAST_WEBHOOK_NAME": "a.b"}, "webhook_name"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], field: str
) -> None:
    with pytest.raises(ConfigError, match=rf"\b{field}\b"):
        _settings(monkeypatch, **env)


def test_dead_letters_have_their_own_subjects_outside_every_event_filter() -> None:
    subjects = Subjects()
    dead = subjects.dead_letter("subscribe", "chat:room")
    assert dead == "meshcast.events.v1.dead.subscribe.chat.chat~3Aroom"
    assert subjects.dead_letter("connect") == "meshcast.events.v1.dead.connect"
    assert dead.startswith(subjects.dead_letters_wildcard()[:-1])
    with pytest.raises(ValueError, match="not an event subject"):
        subjects.event_of(dead)
    assert all(not f.startswith("meshcast.events.v1.dead") for f in subjects.event_filters())
