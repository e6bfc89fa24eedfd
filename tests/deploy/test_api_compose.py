"""The server API in the compose stack: two replicas as NATS user `api`, loopback-published,
health-checked, scraped; their environment is one the service accepts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from meshcast.api.settings import ApiSettings
from meshcast.common.natsauth import inbox_prefix, password_env

COMPOSE = Path(__file__).resolve().parents[2] / "compose"

Manifest = dict[str, Any]


@pytest.fixture(scope="module")
def compose() -> Manifest:
    data: Manifest = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    return data


def _defaults(value: str) -> str:
    """Compose's ``${NAME:-default}`` with its default."""
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def _env(service: Manifest) -> dict[str, str]:
    return {key: _defaults(str(value)) for key, value in service["environment"].items()}


def _apis(compose: Manifest) -> dict[str, Manifest]:
    return {name: s for name, s in compose["services"].items() if name.startswith("api-")}


def test_two_api_replicas_connect_as_user_api_with_the_nats_nodes_password(compose: Manifest) -> None:
    apis = _apis(compose)
    assert sorted(apis) == ["api-1", "api-2"]
    nats_password = _env(compose["services"]["nats-1"])[password_env("api")]
    for name, service in apis.items():
        env = _env(service)
        assert env["MESHCAST_NATS_INBOX_PREFIX"] == inbox_prefix("api"), name
        urls = [urlsplit(u.strip()) for u in env["MESHCAST_NATS_URL"].split(",")]
        assert {u.hostname for u in urls} == {"nats-1", "nats-2", "nats-3"}
        assert {(u.username, u.password) for u in urls} == {("api", nats_password)}, name
        settings = ApiSettings.model_validate({k.removeprefix("MESHCAST_").lower(): v for k, v in env.items()})
        assert settings.api_key.get_secret_value(), "a key, never insecure"
        assert not settings.api_insecure
        assert service["environment"]["MESHCAST_API_KEY"].startswith("${MESHCAST_API_KEY:-")
        # The admin UI's secret from the same place as the key (the shell or compose/.env),
        # a dev-only default of its own: never the key.
        assert settings.admin_secret.get_secret_value().startswith("dev-only-"), name
        assert settings.admin_secret.get_secret_value() != settings.api_key.get_secret_value()
        assert service["environment"]["MESHCAST_ADMIN_SECRET"].startswith("${MESHCAST_ADMIN_SECRET:-")


def test_the_api_is_published_on_loopback_hardened_and_health_checked(compose: Manifest) -> None:
    for name, service in _apis(compose).items():
        assert all(port.startswith("127.0.0.1:") for port in service["ports"]), name
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]
        assert "/ready" in service["healthcheck"]["test"][-1]
        assert "8093" in service["healthcheck"]["test"][-1]
        assert any(v.endswith(":/etc/meshcast/namespaces.yaml:ro") for v in service["volumes"])
        assert all(dep["condition"] == "service_healthy" for dep in service["depends_on"].values())


def test_prometheus_scrapes_every_api_replica(compose: Manifest) -> None:
    config = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for s in job.get("static_configs", []) for t in s["targets"]}
    assert {f"{name}:8093" for name in _apis(compose)} <= targets
    assert set(_apis(compose)) <= set(compose["services"]["prometheus"]["depends_on"])
