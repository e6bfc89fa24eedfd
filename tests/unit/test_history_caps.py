"""History streams' byte caps from the namespaces config and the history settings (streams.py)."""

from __future__ import annotations

import pytest
from nats.js.api import DiscardPolicy
from pydantic import ValidationError

from meshcast.bus import Subjects
from meshcast.common.namespaces import ChannelOptions, ChannelsConfig, Namespace
from meshcast.common.settings import ConfigError
from meshcast.history.settings import HistorySettings
from meshcast.history.streams import stream_specs

MIB = 1 << 20


def _caps(channels: ChannelsConfig, **limits: int) -> dict[str, int | None]:
    specs = stream_specs(channels, Subjects(), replicas=1, storage="file", duplicate_window=60, **limits)
    assert all(spec.config.discard == DiscardPolicy.OLD for spec in specs)
    return {spec.namespace: spec.config.max_bytes for spec in specs}


def test_every_history_stream_has_a_cap_its_own_or_the_service_default() -> None:
    channels = ChannelsConfig.model_validate(
        {
            "namespaces": [
                {"name": "chat", "history_size": 100, "history_ttl": 60, "history_max_bytes": "64MiB"},
                {"name": "feed", "history_size": 10, "history_ttl": 60},
                {"name": "live"},
            ],
            "default": {"history_size": 5, "history_ttl": 60},
        }
    )
    assert _caps(channels, max_bytes=32 * MIB) == {"chat": 64 * MIB, "feed": 32 * MIB, "": 32 * MIB}


def test_caps_adding_up_past_the_total_are_a_config_error_naming_it() -> None:
    channels = ChannelsConfig(namespaces=[Namespace(name=n, history_size=10, history_ttl=60) for n in ("a", "b", "c")])
    assert sum(v or 0 for v in _caps(channels, max_bytes=MIB, total_max_bytes=3 * MIB).values()) == 3 * MIB
    with pytest.raises(ConfigError, match=r"history_total_max_bytes.*MESHCAST_HISTORY_TOTAL_MAX_BYTES"):
        _caps(channels, max_bytes=MIB, total_max_bytes=3 * MIB - 1)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"history_max_bytes": "64MiB"}, "history_max_bytes needs history_size > 0"),
        ({"history_size": 10, "history_ttl": 60, "history_max_bytes": 1000}, "at least 131072"),
        ({"history_size": 10, "history_ttl": 60, "history_max_bytes": "plenty"}, "history_max_bytes"),
        ({"history_size": 10, "history_ttl": 60, "history_max_bytes": -1}, "history_max_bytes"),
    ],
)
def test_a_bad_namespace_cap_is_refused_naming_it(options: dict[str, object], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        ChannelOptions.model_validate(options)


def test_the_service_caps_read_sizes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHCAST_HISTORY_MAX_BYTES", "128MiB")
    monkeypatch.setenv("MESHCAST_HISTORY_TOTAL_MAX_BYTES", "2GiB")
    settings = HistorySettings.load()
    assert (settings.history_max_bytes, settings.history_total_max_bytes) == (128 * MIB, 2048 * MIB)
    monkeypatch.setenv("MESHCAST_HISTORY_MAX_BYTES", "1KiB")
    with pytest.raises(ConfigError, match="history_max_bytes"):
        HistorySettings.load()
