"""The generated Centrifugo config: accepted by Centrifugo itself, equivalent option by option."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from meshcast.common.namespaces import ChannelsConfig, load_channels_config

from .centrifugo_config import Limits, NotEquivalent, centrifugo_config, channel_options
from .conftest import API_KEY, NAMESPACES, SECRET

ROOT = Path(__file__).resolve().parents[2]
FILES = [NAMESPACES, ROOT / "tests" / "e2e" / "namespaces.yaml", ROOT / "config" / "namespaces.yaml"]


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT)) for p in FILES])
def test_centrifugo_accepts_the_config_of_every_namespaces_file(
    reference_binary: Path, tmp_path: Path, path: Path
) -> None:
    config = centrifugo_config(load_channels_config(path), secret=SECRET, api_key=API_KEY, limits=Limits())
    target = tmp_path / "config.json"
    target.write_text(json.dumps(config))
    done = subprocess.run(
        [str(reference_binary), "checkconfig", "--config", str(target)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_permissions_map_as_the_gateway_decides_them() -> None:
    channels = ChannelsConfig.model_validate(
        {
            "namespaces": [
                {"name": "chat", "history_size": 10, "history_ttl": 60, "recovery": True, "presence": True},
                {"name": "open", "allow_subscribe_anonymous": True, "allow_publish": True},
                {"name": "lobby", "presence": True, "allow_presence_without_subscribe": True},
            ]
        }
    )
    chat, open_, lobby = (
        channel_options(channels.options_for(f"{n}:x") or channels.default) for n in ("chat", "open", "lobby")
    )
    assert _permissions(chat) == {
        "force_recovery": True,
        "allow_subscribe_for_client": True,
        "allow_subscribe_for_anonymous": False,
        "allow_publish_for_client": False,
        "allow_history_for_client": True,
        "allow_presence_for_subscriber": True,
        "allow_presence_for_client": False,
        "allow_user_limited_channels": True,
    }
    assert chat["history_ttl"] == "60s"
    assert _permissions(open_) == {
        "force_recovery": False,
        "allow_subscribe_for_client": True,
        "allow_subscribe_for_anonymous": True,
        "allow_publish_for_client": True,
        "allow_history_for_client": False,
        "allow_presence_for_subscriber": False,
        "allow_presence_for_client": False,
        "allow_user_limited_channels": True,
    }
    assert lobby["allow_presence_for_client"] is True


def _permissions(options: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "force_recovery",
        "allow_subscribe_for_client",
        "allow_subscribe_for_anonymous",
        "allow_publish_for_client",
        "allow_history_for_client",
        "allow_presence_for_subscriber",
        "allow_presence_for_client",
        "allow_user_limited_channels",
    )
    return {k: options[k] for k in keys}


@pytest.mark.parametrize("option", [{"proxy_subscribe": True}, {"proxy_publish": True}, {"publish_info": False}])
def test_options_without_a_counterpart_are_refused(option: dict[str, bool]) -> None:
    channels = ChannelsConfig.model_validate({"namespaces": [{"name": "x", **option}]})
    with pytest.raises(NotEquivalent):
        centrifugo_config(channels, secret=SECRET, api_key=API_KEY, limits=Limits())
