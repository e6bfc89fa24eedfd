"""The NATS users model (meshcast.common.natsauth) and make run's passwords (meshcast.devtools.natsusers).

What the permissions allow and refuse on a real server is in
tests/integration/test_nats_permissions.py.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from meshcast.bus import Subjects
from meshcast.common.natsauth import (
    API,
    AUTH,
    BACKEND,
    DEFAULT_INBOX_PREFIX,
    EVENTS,
    GATEWAY,
    HISTORY,
    PRESENCE,
    USERS,
    EnvPassword,
    check_password,
    env_passwords,
    generate_password,
    inbox,
    inbox_prefix,
    password_env,
    permissions,
    render_authorization,
    url_with_credentials,
)
from meshcast.common.settings import ServiceSettings
from meshcast.devtools.natsusers import BEGIN, END, PASSWORDS_FILE, dev_passwords, with_users_block


def test_generated_passwords_are_random_and_safe() -> None:
    passwords = {generate_password() for _ in range(50)}
    assert len(passwords) == 50
    assert all(check_password(p) == p for p in passwords)


@pytest.mark.parametrize(
    "password",
    ["", "short", "1234567890123456789", "-starts-with-a-dash-x", "has space in it 1234", 'quo"te-1234567890ab'],
)
def test_unsafe_passwords_are_refused(password: str) -> None:
    with pytest.raises(ValueError, match="NATS password"):
        check_password(password)


def test_credentials_go_into_every_url() -> None:
    password = generate_password()
    assert url_with_credentials(" nats://a:4222 ,nats://old:secret@b:4223", "history", password) == (
        f"nats://history:{password}@a:4222,nats://history:{password}@b:4223"
    )
    with pytest.raises(ValueError, match="NATS password"):
        url_with_credentials("nats://a:4222", "history", "p@ss")


def test_passwords_are_literals_or_environment_references() -> None:
    password = generate_password()
    conf = render_authorization({GATEWAY: password, HISTORY: EnvPassword("NATS_HISTORY_PASSWORD")})
    assert f'user: "gateway"\n      password: "{password}"' in conf
    assert 'user: "history"\n      password: $NATS_HISTORY_PASSWORD' in conf
    assert 'user: "presence"' not in conf
    every = render_authorization(env_passwords())
    assert all(f"password: ${password_env(user)}\n" in every for user in USERS)
    with pytest.raises(ValueError, match="admin"):
        render_authorization({"admin": password})
    with pytest.raises(ValueError, match="environment variable"):
        EnvPassword("lower-case")


def test_subjects_follow_the_prefix() -> None:
    conf = render_authorization(env_passwords(), Subjects(prefix="acme"))
    assert '"acme.live.>"' in conf
    assert "meshcast." not in conf


def test_least_privilege_in_the_model() -> None:
    model = permissions()
    assert set(model) == set(USERS)
    # Everyone gets replies (on its own inboxes); only history has the whole JetStream API.
    assert all(inbox(user) in p.subscribe for user, p in model.items())
    assert [user for user, p in model.items() if "$JS.API.>" in p.publish] == [HISTORY]
    # Nobody deletes a stream: denied, or nothing allowed could match.
    for user, p in model.items():
        assert "$JS.API.STREAM.DELETE.>" in p.publish_deny or "$JS.API.>" in p.publish_deny, user
    # Only the history service answers history requests.
    assert [user for user, p in model.items() if any(s.startswith("meshcast.history.") for s in p.subscribe)] == [
        HISTORY
    ]
    gateway = model[GATEWAY]
    assert "meshcast.history.v1.remove" not in gateway.publish
    assert not [s for s in gateway.publish if s.startswith(("$KV.", "$JS.API.STREAM.CREATE", "$JS.API.STREAM.DELETE"))]


def test_each_user_reads_its_own_inboxes_only() -> None:
    model = permissions()
    assert ServiceSettings().nats_inbox_prefix == DEFAULT_INBOX_PREFIX == "_INBOX"  # nats-py's default
    prefixes = {user: inbox_prefix(user) for user in USERS}
    assert prefixes[BACKEND] == "_INBOX_backend"
    assert len(set(prefixes.values())) == len(USERS)
    for user, p in model.items():
        inboxes = [s for s in p.subscribe if s.startswith(DEFAULT_INBOX_PREFIX)]
        assert inboxes == [f"{prefixes[user]}.>"], user
        # The shared default and every other user's inboxes are denied outright.
        others = {f"{DEFAULT_INBOX_PREFIX}.>"} | {inbox(other) for other in USERS if other != user}
        assert others <= set(p.subscribe_deny), user
        assert inbox(user) not in p.subscribe_deny
        # Nobody publishes into inboxes but as a responder (allow_responses).
        assert not [s for s in p.publish if s.startswith(("_INBOX", ">"))], user


@pytest.mark.parametrize("prefix", ["", "_INBOX.*", "_INBOX.>", "_INBOX_a.", ".x", "has space"])
def test_an_inbox_prefix_with_wildcards_or_empty_tokens_is_refused(prefix: str) -> None:
    with pytest.raises(ValidationError, match="nats_inbox_prefix"):
        ServiceSettings(nats_inbox_prefix=prefix)
    assert ServiceSettings(nats_inbox_prefix="acme._INBOX_gateway").nats_inbox_prefix == "acme._INBOX_gateway"


def test_make_run_passwords_are_made_once_and_private(tmp_path: Path) -> None:
    first = dev_passwords(tmp_path)
    assert set(first) == set(USERS)
    path = tmp_path / PASSWORDS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert dev_passwords(tmp_path) == first

    # A user added later, or an unusable password, gets a new one; the others stay.
    stored = json.loads(path.read_text())
    del stored[GATEWAY]
    stored[HISTORY] = "123"
    path.write_text(json.dumps(stored))
    again = dev_passwords(tmp_path)
    assert again[BACKEND] == first[BACKEND]
    assert again[GATEWAY] != first[GATEWAY]
    assert check_password(again[HISTORY])
    assert json.loads(path.read_text()) == again

    path.write_text("not json")
    assert set(dev_passwords(tmp_path)) == set(USERS)


def test_the_users_block_is_appended_then_replaced() -> None:
    conf = "listen: 0.0.0.0:4222\n"
    once = with_users_block(conf)
    assert once.startswith(conf)
    assert once.count(BEGIN) == once.count(END) == 1
    assert with_users_block(once) == once
    edited = once.replace('"meshcast.live.>"', '"meshcast.>"', 1)
    assert with_users_block(edited) == once
    with pytest.raises(ValueError, match="marker"):
        with_users_block(conf + BEGIN)


def test_only_the_history_service_writes_removal_markers() -> None:
    """A forged marker would make every earlier position of a channel unrecoverable."""
    model = permissions()
    removals = Subjects().removals()
    assert removals in model[HISTORY].publish
    for user, p in model.items():
        if user != HISTORY:
            assert removals in p.publish_deny, user
            assert not [s for s in p.publish if s.startswith(("meshcast.removed", "meshcast.>", ">"))], user


def test_the_api_user_publishes_and_asks_but_answers_only_info_and_manages_nothing() -> None:
    model = permissions()
    api = model[API]
    assert api.responds  # its own `info` entry, like every service
    assert api.subscribe == ("meshcast.presence.v1.heartbeat", "meshcast.node.v1.info", inbox(API))
    for subject in ("meshcast.live.>", "meshcast.in.>", "meshcast.control", "meshcast.node.v1.*"):
        assert subject in api.publish
    assert "meshcast.history.v1.remove" in api.publish
    assert {"$JS.API.>", "$KV.>", "meshcast.removed.>"} <= set(api.publish_deny)
    # It cannot pose as a gateway answering `channels`, nor as a service.
    assert {"meshcast.node.v1.channels", "meshcast.history.v1.>", "meshcast.presence.v1.query"} <= set(
        api.subscribe_deny
    )


def test_every_service_answers_info() -> None:
    model = permissions()
    for user in (GATEWAY, HISTORY, PRESENCE, AUTH, API):
        assert model[user].responds, user
        assert any(s in ("meshcast.node.v1.info", "meshcast.node.v1.*") for s in model[user].subscribe), user
    assert "meshcast.node.v1.info" not in model[BACKEND].subscribe
    # Every gateway answers it.
    assert "meshcast.node.v1.*" in model[GATEWAY].subscribe


def test_the_events_stream_has_one_owner_and_gateways_tell_only_of_their_own_clients() -> None:
    model = permissions()
    stream = Subjects().events_stream
    purge = f"$JS.API.STREAM.PURGE.{stream}"
    assert [user for user, p in model.items() if purge in p.publish] == [EVENTS]
    # History's whole JetStream API stops short of it.
    assert f"$JS.API.STREAM.*.{stream}" in model[HISTORY].publish_deny
    assert [s for s in model[GATEWAY].publish if s.startswith("meshcast.events.")] == [
        "meshcast.events.v1.connect",
        "meshcast.events.v1.disconnect",
        "meshcast.events.v1.subscribe.>",
        "meshcast.events.v1.unsubscribe.>",
        "meshcast.events.v1.publication.>",
    ]
    assert [s for s in model[PRESENCE].publish if s.startswith("meshcast.events.")] == [
        "meshcast.events.v1.gateway_expired"
    ]
    backend = model[BACKEND]
    assert f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.*" in backend.publish
    assert not [s for s in backend.publish if s.startswith("meshcast.events.")]
    assert not [s for s in backend.publish if s.startswith("$JS.API.STREAM.") and "INFO" not in s and "GET" not in s]
