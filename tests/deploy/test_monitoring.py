"""The monitoring artefacts: alert rules (checked and unit-tested by the real
promtool), Grafana dashboards, their Kubernetes and compose wiring, and that every
metric they name is one the running services export (no silently empty panel,
no alert that can never fire)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshcast.testing import timeout, wait_until
from meshcast.testing.monitoring import exported_names, monitored_stack
from meshcast.testing.tools import require_tool

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "monitoring"
ALERTS = MONITORING / "alerts.yaml"
ALERTS_TEST = MONITORING / "alerts_test.yaml"
DASHBOARDS = sorted((MONITORING / "dashboards").glob("*.json"))
COMPONENT = REPO / "k8s" / "components" / "monitoring"
COMPOSE = REPO / "compose"
PROMTOOL_HOW = "Debian's prometheus package: apt-get install prometheus (.ci/run installs it)"
# Every alert of issue #11, by what it watches.
ALERTS_REQUIRED = {
    "MeshcastGatewayDown",
    "MeshcastNatsDisconnected",
    "MeshcastDeliveryLatencyHigh",
    "MeshcastGatewayInternalErrors",
    "MeshcastApiErrors",
    "MeshcastJetStreamStorageNearFull",
    "MeshcastHistoryUnavailable",
    "MeshcastPresenceUnavailable",
    "MeshcastWebhookDeadLettersGrowing",
}
METRIC = re.compile(r"\bmeshcast_[a-z0-9_]*[a-z0-9]")
RECORDED = re.compile(r"\bmeshcast:[a-z0-9_:]*[a-z0-9]")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = require_tool("promtool", PROMTOOL_HOW)
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=timeout(60), cwd=MONITORING, check=False
    )


def _rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> dict[str, list[str]]:
    exprs: dict[str, list[str]] = {}
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                exprs.setdefault(f"{path.name}: {panel['title']}", []).append(target["expr"])
    return exprs


# --------------------------------------------------------------------------
# alert rules
# --------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check() -> None:
    result = _promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_fire_and_stay_quiet_as_their_unit_tests_say() -> None:
    result = _promtool("test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested_and_classified() -> None:
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])}
    firing = {case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    alerts = {rule["alert"]: rule for rule in _rules() if "alert" in rule}
    assert set(alerts) >= ALERTS_REQUIRED
    assert set(alerts) == tested == firing, "an alert without a test that shows it firing"
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert {"summary", "description"} <= set(rule["annotations"]), name


# --------------------------------------------------------------------------
# dashboards
# --------------------------------------------------------------------------


def test_dashboards_and_kubernetes_copies_are_generated_and_current() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_monitoring.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=timeout(30),
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_a_grafana_dashboard_on_a_prometheus_variable(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] == path.stem
    assert dashboard["title"]
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_dashboards_cover_what_operators_watch() -> None:
    text = "\n".join(path.read_text() for path in DASHBOARDS)
    for metric in (
        "meshcast_gateway_connections",
        "meshcast_gateway_channels",
        "meshcast_gateway_commands_total",
        "meshcast_gateway_delivery_latency_seconds_bucket",
        "meshcast_gateway_reply_errors_total",
        "meshcast_nats_connected",
        "meshcast_jetstream_storage_bytes",
    ):
        assert metric in text, metric


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every panel query (as a rule: Grafana's own variables replaced)."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr.replace("$__rate_interval", "5m").replace("$__range", "1h")}
        for i, expr in enumerate(expr for exprs in _dashboard_exprs().values() for expr in exprs)
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = _promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------
# Kubernetes and compose
# --------------------------------------------------------------------------


def _kustomize_with_component(tmp_path: Path) -> list[dict[str, Any]]:
    kubectl = require_tool("kubectl", "the kubectl wheel of requirements.lock: make install")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    base = os.path.relpath(REPO / "k8s" / "base", overlay)
    component = os.path.relpath(COMPONENT, overlay)
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": [base], "components": [component], "namespace": "meshcast"})
    )
    out = subprocess.run(
        [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=timeout(60), check=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def test_kubernetes_component_ships_the_rules_and_the_dashboards(tmp_path: Path) -> None:
    docs = _kustomize_with_component(tmp_path)
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "meshcast"
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]
    config_map = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("meshcast-dashb")
    )
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["data"] == {path.name: path.read_text() for path in DASHBOARDS}


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def test_kubernetes_component_scrapes_every_service_on_its_metrics_port(tmp_path: Path) -> None:
    docs = _kustomize_with_component(tmp_path)
    monitors = [d for d in docs if d["kind"] == "PodMonitor"]
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert deployments
    for deployment in deployments:
        template = deployment["spec"]["template"]
        name = deployment["metadata"]["name"]
        matching = [m for m in monitors if _selects(m["spec"]["selector"], template["metadata"]["labels"])]
        assert len(matching) == 1, f"{name}: scraped by {len(matching)} PodMonitors"
        (endpoint,) = matching[0]["spec"]["podMetricsEndpoints"]
        ports = {p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        annotated = int(template["metadata"]["annotations"]["prometheus.io/port"])
        assert ports[endpoint["port"]] == annotated, name
        assert endpoint["path"] == template["metadata"]["annotations"]["prometheus.io/path"], name


def test_compose_prometheus_loads_the_rules(tmp_path: Path) -> None:
    compose = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["prometheus"]["volumes"]}
    config = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    rules_mount = next(m for m in mounts if any(Path(m).match(pattern) for pattern in config["rule_files"]))
    assert (COMPOSE / mounts[rules_mount]).resolve() == ALERTS
    # promtool checks the config as Prometheus would load it, the rules where it finds them.
    config["rule_files"] = [str(ALERTS)]
    checked = tmp_path / "prometheus.yml"
    checked.write_text(yaml.safe_dump(config))
    result = _promtool("check", "config", str(checked))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_grafana_provisions_the_dashboards() -> None:
    compose = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["grafana"]["volumes"]}
    provisioning = COMPOSE / mounts["/etc/grafana/provisioning"]
    providers = yaml.safe_load((provisioning / "dashboards" / "meshcast.yml").read_text())["providers"]
    path = providers[0]["options"]["path"]
    assert (COMPOSE / mounts[path]).resolve() == MONITORING / "dashboards"


# --------------------------------------------------------------------------
# every referenced metric exists
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """The sample names each running service's /metrics defines, by scrape job."""
    with monitored_stack(tmp_path_factory.mktemp("monitoring")) as targets:
        history = next(t for t in targets if t.job == "meshcast-history")
        # The JetStream usage comes with the history service's first poll of its account.
        wait_until(lambda: "meshcast_jetstream_storage_bytes" in exported_names(history.metrics()), 10, "usage")
        return {target.job: exported_names(target.metrics()) for target in targets}


def _referenced() -> dict[str, set[str]]:
    """Each metric an alert or a dashboard panel names, with where."""
    where: dict[str, set[str]] = {}
    for rule in _rules():
        for name in METRIC.findall(rule["expr"]):
            where.setdefault(name, set()).add(f"alerts.yaml: {rule.get('alert') or rule.get('record')}")
    for panel, exprs in _dashboard_exprs().items():
        for expr in exprs:
            for name in METRIC.findall(expr):
                where.setdefault(name, set()).add(panel)
    return where


def test_every_metric_of_the_alerts_and_dashboards_is_exported(exported: dict[str, set[str]]) -> None:
    everything = set().union(*exported.values())
    missing = {name: sorted(places) for name, places in _referenced().items() if name not in everything}
    assert not missing, f"metrics no running service exports: {json.dumps(missing, indent=2)}"


def test_every_recorded_series_the_dashboards_use_is_a_rule() -> None:
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    used = {name for exprs in _dashboard_exprs().values() for expr in exprs for name in RECORDED.findall(expr)}
    used |= {name for rule in _rules() for name in RECORDED.findall(rule["expr"])}
    assert used <= recorded


def test_every_service_says_which_build_it_is(exported: dict[str, set[str]]) -> None:
    for job, names in exported.items():
        assert {"meshcast_build_info", "meshcast_nats_connected", "meshcast_event_loop_lag_seconds_bucket"} <= names, (
            job
        )
