"""Prometheus (in the `monitoring` namespace) may reach every metrics port: each Meshcast
service's (its prometheus.io/port) and NATS' monitoring port, through the NetworkPolicies."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from .overlays import OVERLAYS, Manifest, overlays

__all__ = ["overlays"]  # the fixture

MONITORING = {"kubernetes.io/metadata.name": "monitoring"}
NATS_MONITOR_PORT = 8222


def _selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, op, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if (op == "In" and labels.get(key) not in values) or (op == "NotIn" and present and labels[key] in values):
            return False
        if (op == "Exists" and not present) or (op == "DoesNotExist" and present):
            return False
    return True


def _admits_monitoring(peer: Mapping[str, Any]) -> bool:
    """A `from` entry that lets any pod of the monitoring namespace in."""
    if "ipBlock" in peer or "namespaceSelector" not in peer:
        return False
    return _selects(peer["namespaceSelector"], MONITORING) and not (peer.get("podSelector") or {})


def _reachable(docs: list[Manifest], labels: Mapping[str, str], port: int) -> bool:
    policies = [
        p
        for p in docs
        if p["kind"] == "NetworkPolicy"
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and _selects(p["spec"]["podSelector"], labels)
    ]
    if not policies:
        return True  # no policy isolates the pod
    for policy in policies:
        for rule in policy["spec"].get("ingress") or []:
            ports = {p.get("port") for p in rule.get("ports") or []}
            if ports and port not in ports:
                continue
            peers = rule.get("from")
            if not peers or any(_admits_monitoring(peer) for peer in peers):
                return True
    return False


def _scraped(docs: list[Manifest]) -> list[tuple[str, dict[str, str], int]]:
    targets = []
    for doc in docs:
        if doc["kind"] not in {"Deployment", "StatefulSet"}:
            continue
        template = doc["spec"]["template"]["metadata"]
        labels: dict[str, str] = template.get("labels", {})
        annotations = template.get("annotations") or {}
        if "prometheus.io/port" in annotations:
            targets.append((doc["metadata"]["name"], labels, int(annotations["prometheus.io/port"])))
        elif labels.get("app.kubernetes.io/name") == "nats":
            targets.append(("nats", labels, NATS_MONITOR_PORT))
    return targets


@pytest.mark.parametrize("name", OVERLAYS)
def test_prometheus_reaches_every_metrics_port(overlays: dict[str, list[Manifest]], name: str) -> None:
    targets = _scraped(overlays[name])
    assert {"gateway", "history", "presence", "auth", "api", "events", "nats"} <= {t[0] for t in targets}
    for workload, labels, port in targets:
        assert _reachable(overlays[name], labels, port), f"{name}: no policy admits `monitoring` to {workload}:{port}"


@pytest.mark.parametrize("name", OVERLAYS)
def test_nats_client_and_route_ports_stay_closed_to_monitoring(overlays: dict[str, list[Manifest]], name: str) -> None:
    labels = {"app.kubernetes.io/name": "nats"}
    for port in (4222, 6222):
        assert not _reachable(overlays[name], labels, port), f"{name}: monitoring reaches NATS {port}"
