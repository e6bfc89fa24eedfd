"""A stopping gateway finishes its drain before it is killed, in Kubernetes and in compose:
the grace period covers its whole SIGTERM path (GatewaySettings.stop_seconds)."""

from __future__ import annotations

import re

import pytest

from meshcast.gateway.settings import GatewaySettings

from .overlays import OVERLAYS, Manifest, compose_env, compose_file, container, env, one, overlays

__all__ = ["overlays"]  # the fixture


def _settings(values: dict[str, str]) -> GatewaySettings:
    fields = {k[len("MESHCAST_") :].lower(): v for k, v in values.items() if k.startswith("MESHCAST_")}
    return GatewaySettings.model_validate({k: v for k, v in fields.items() if k in GatewaySettings.model_fields})


def _seconds(duration: str) -> float:
    parts = re.findall(r"([0-9.]+)(ms|h|m|s)", duration)
    assert "".join(n + u for n, u in parts) == duration, f"unparsable duration {duration!r}"
    return sum(float(n) * {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3}[u] for n, u in parts)


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_pod_grace_period_covers_pre_stop_and_the_whole_gateway_stop(
    overlays: dict[str, list[Manifest]], name: str
) -> None:
    deployment = one(overlays[name], "Deployment", "gateway")
    gateway = container(deployment, "gateway")
    command = gateway["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    needed = float(command[1]) + _settings(env(gateway)).stop_seconds()
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > needed, f"{name}: terminationGracePeriodSeconds {grace} < preStop + stop path {needed}s"


def test_compose_stop_grace_period_covers_the_whole_gateway_stop() -> None:
    gateways = {n: s for n, s in compose_file()["services"].items() if n.startswith("gateway-")}
    assert gateways
    for name, service in gateways.items():
        needed = _settings(compose_env(service)).stop_seconds()
        grace = _seconds(service["stop_grace_period"])
        assert grace > needed, f"{name}: stop_grace_period {grace}s < the gateway's stop path {needed}s"


def test_the_stop_path_grows_with_the_drain() -> None:
    assert _settings({"MESHCAST_DRAIN_SECONDS": "60"}).stop_seconds() == GatewaySettings().stop_seconds() + 50
