"""NATS knows its memory limit: GOMEMLIMIT (the Go runtime's soft limit) sits under the
container's limit, above what JetStream's memory store may hold, in k8s and compose."""

from __future__ import annotations

import re

import pytest

from .overlays import COMPOSE, OVERLAYS, Manifest, compose_file, container, env, nats_size, one, overlays, quantity

__all__ = ["overlays"]  # the fixture

# GOMEMLIMIT between these shares of the container limit: room for the non-heap memory
# (stacks, the binary, buffers) above it, and no limit so low the collector never rests.
LOW, HIGH = 0.75, 0.95
_GO_UNITS = {"": 1, "B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
_COMPOSE_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30}


def _go_size(text: str) -> int:
    """GOMEMLIMIT's syntax: a number with an optional B, KiB, MiB, GiB or TiB."""
    match = re.fullmatch(r"(\d+)(B|KiB|MiB|GiB|TiB)?", text)
    assert match, f"GOMEMLIMIT {text!r} is not in Go's syntax (e.g. 900MiB)"
    return int(match.group(1)) * _GO_UNITS[match.group(2) or ""]


def _assert_sized(where: str, gomemlimit: int, limit: float, memory_store: int) -> None:
    assert LOW * limit <= gomemlimit <= HIGH * limit, (
        f"{where}: GOMEMLIMIT {gomemlimit / 2**20:.0f} MiB is not {LOW:.0%}-{HIGH:.0%} of {limit / 2**20:.0f} MiB"
    )
    assert memory_store < gomemlimit, f"{where}: JetStream's memory store does not fit under GOMEMLIMIT"


@pytest.mark.parametrize("name", OVERLAYS)
def test_kubernetes_nats_has_a_go_memory_limit_under_its_container_limit(
    overlays: dict[str, list[Manifest]], name: str
) -> None:
    nats = container(one(overlays[name], "StatefulSet", "nats"), "nats")
    values = env(nats)
    assert "GOMEMLIMIT" in values, f"{name}: NATS has no GOMEMLIMIT"
    limit = quantity(nats["resources"]["limits"]["memory"])
    _assert_sized(name, _go_size(values["GOMEMLIMIT"]), limit, nats_size(values["JS_MAX_MEMORY_STORE"]))


def test_compose_nats_has_a_memory_limit_and_a_go_memory_limit_under_it() -> None:
    conf = (COMPOSE / "nats" / "nats.conf").read_text()
    store = re.search(r"^\s*max_memory_store:\s*(\S+)", conf, re.MULTILINE)
    assert store, "compose/nats/nats.conf sets no max_memory_store"
    nodes = {n: s for n, s in compose_file()["services"].items() if n.startswith("nats-")}
    assert len(nodes) == 3
    for name, service in nodes.items():
        match = re.fullmatch(r"(\d+)([bkmg]?)", str(service.get("mem_limit", "")).lower())
        assert match, f"{name}: no mem_limit"
        limit = int(match.group(1)) * _COMPOSE_UNITS[match.group(2)]
        gomemlimit = service.get("environment", {}).get("GOMEMLIMIT")
        assert gomemlimit, f"{name}: no GOMEMLIMIT"
        _assert_sized(name, _go_size(str(gomemlimit)), limit, nats_size(store.group(1)))
