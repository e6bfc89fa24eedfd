"""Namespaces config and service settings: valid files load, bad ones name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshcast.common.namespaces import ChannelsConfig, load_channels_config
from meshcast.common.settings import ConfigError
from meshcast.gateway.settings import GatewaySettings

ROOT = Path(__file__).resolve().parents[2]


def test_make_run_config_has_chat_and_default_channels() -> None:
    config = load_channels_config(ROOT / "config" / "namespaces.yaml")
    chat = config.options_for("chat:index")
    assert chat is not None
    assert (chat.history_size, chat.history_ttl, chat.presence, chat.join_leave, chat.recovery) == (
        100,
        300,
        True,
        True,
        True,
    )
    assert chat.allow_publish
    default = config.options_for("lobby")
    assert default is not None
    assert default.allow_publish
    assert default.allow_subscribe
    assert config.options_for("unknown:x") is None


def test_toml_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "ns.toml"
    path.write_text('[[namespaces]]\nname = "news"\nallow_publish = false\n')
    config = load_channels_config(path)
    news = config.options_for("news:today")
    assert news is not None
    assert not news.allow_publish


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("namespaces:\n  - name: chat\n    history_size: -1\n    history_ttl: 5\n", "namespaces.0.history_size"),
        ("namespaces:\n  - name: 'bad name'\n", "namespaces.0.name"),
        ("namespaces:\n  - name: chat\n    recovery: true\n", "namespaces.0"),
        ("namespaces:\n  - name: chat\n    colour: red\n", "namespaces.0.colour"),
        ("namespaces:\n  - name: a\n  - name: a\n", "namespaces"),
        ("default:\n  channel_regex: '('\n", "default.channel_regex"),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "ns.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_channels_config(path)
    assert f"  {field}:" in str(info.value)


def test_unreadable_or_non_mapping_config_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_channels_config(tmp_path / "missing.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- a\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_channels_config(path)


def test_channel_regex_is_searched_in_the_name_after_the_namespace() -> None:
    # As Centrifugo's channel_regex (Go's MatchString): a match anywhere in the name after
    # the namespace; anchors make it match the whole name.
    config = ChannelsConfig.model_validate(
        {"namespaces": [{"name": "n", "channel_regex": "[a-z0-9]+"}, {"name": "w", "channel_regex": "^[a-z]+$"}]}
    )
    options, whole = config.options_for("n:abc"), config.options_for("w:abc")
    assert options is not None
    assert whole is not None
    assert [config.name_of(c) for c in ("n:abc", "$n:abc", "abc", "n:a:b")] == ["abc", "abc", "abc", "a:b"]
    assert options.name_allowed("abc")
    assert options.name_allowed("ABCd")
    assert not options.name_allowed("ABC")
    assert whole.name_allowed("abc")
    assert not whole.name_allowed("abcD")


def test_settings_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("gateway_port: 9001\nping_interval: 5\n")
    monkeypatch.setenv("MESHCAST_CONFIG_FILE", str(path))
    monkeypatch.setenv("MESHCAST_PING_INTERVAL", "7")
    settings = GatewaySettings.load()
    assert settings.gateway_port == 9001
    assert settings.ping_interval == 7


def test_bad_setting_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHCAST_GATEWAY_PORT", "not-a-port")
    with pytest.raises(ConfigError, match="gateway_port"):
        GatewaySettings.load()
