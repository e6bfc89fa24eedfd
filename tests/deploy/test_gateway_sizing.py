"""The gateways' connection limit fits their memory limit (services/gateway/README.md, Sizing)."""

from __future__ import annotations

import re

import pytest

from meshcast.gateway.settings import GatewaySettings

from .overlays import OVERLAYS, REPO, Manifest, container, env, one, overlays, quantity

__all__ = ["overlays"]  # the fixture

MIB, KIB = 2**20, 2**10
_RULE = re.compile(
    r"memory limit >= (?P<base>\d+) MiB \+ MESHCAST_MAX_CONNECTIONS x (?P<kib>[\d.]+) KiB x (?P<headroom>[\d.]+)"
)


def _rule() -> tuple[float, float, float]:
    """The sizing rule and the measured KiB per connection, as the gateway's README states them."""
    text = (REPO / "services" / "gateway" / "README.md").read_text()
    match = _RULE.search(text)
    assert match, "services/gateway/README.md states no sizing rule"
    measured = re.search(r"RSS grows by ([\d.]+) KiB per\s+connection", text)
    assert measured, "services/gateway/README.md states no measured KiB per connection"
    assert float(measured.group(1)) == float(match["kib"]), "the rule must use the measured figure"
    return float(match["base"]) * MIB, float(match["kib"]) * KIB, float(match["headroom"])


def _needed(connections: int) -> float:
    base, per_connection, headroom = _rule()
    return base + connections * per_connection * headroom


def _gateway_limits(docs: list[Manifest]) -> tuple[int, float]:
    gateway = container(one(docs, "Deployment", "gateway"), "gateway")
    values = env(gateway)
    assert "MESHCAST_MAX_CONNECTIONS" in values, "each overlay states its gateways' connection limit"
    return int(values["MESHCAST_MAX_CONNECTIONS"]), quantity(gateway["resources"]["limits"]["memory"])


@pytest.mark.parametrize("name", OVERLAYS)
def test_max_connections_fit_the_gateway_memory_limit(overlays: dict[str, list[Manifest]], name: str) -> None:
    connections, limit = _gateway_limits(overlays[name])
    needed = _needed(connections)
    assert needed <= limit, (
        f"{name}: {connections} connections need {needed / MIB:.0f} MiB, the limit is {limit / MIB:.0f} MiB"
    )
    # Not sized absurdly low either: at least half of what the limit holds.
    assert needed >= limit / 2, f"{name}: {connections} connections use under half of {limit / MIB:.0f} MiB"


def test_the_default_fits_the_prod_overlay(overlays: dict[str, list[Manifest]]) -> None:
    default = GatewaySettings.model_fields["max_connections"].default
    _, limit = _gateway_limits(overlays["prod"])
    assert _needed(default) <= limit
