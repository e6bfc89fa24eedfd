"""The two lock files: what the services run on, and what only development needs.

``requirements.lock`` pins the runtime closure: every third-party distribution the runtime
packages (`RUNTIME_PACKAGES`, what the image installs) require, transitively, and nothing else.
``requirements-dev.lock`` pins the rest of the workspace's venv (tests, linters, tools, SDKs
the e2e tests drive). `make install` installs both; the Dockerfile only the first.

``python -m meshcast.devtools.lock`` re-pins both from the venv (`make lock`); ``--check``
says whether the committed files are that split (tests/deploy runs it).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[5]
RUNTIME_LOCK = "requirements.lock"
DEV_LOCK = "requirements-dev.lock"
# What the image installs (Dockerfile): the libraries the services import, and the services.
RUNTIME_LIBS = ("libs/proto", "libs/protocol", "libs/bus", "libs/backend", "libs/common", "libs/tokens")
_RUNTIME_HEADER = (
    "# Pinned third-party packages the services run on (the image installs these only).",
    "# Regenerate with `make lock` after changing a dependency; development tools are in",
    f"# {DEV_LOCK}.",
)
_DEV_HEADER = (
    f"# Pinned third-party packages of development only (tests, linters, tools), beside {RUNTIME_LOCK}.",
    "# Regenerate with `make lock`; `make install` installs both files.",
)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_packages(repo: Path = REPO) -> list[Path]:
    """The project directories the image installs."""
    return [repo / lib for lib in RUNTIME_LIBS] + sorted(p.parent for p in (repo / "services").glob("*/pyproject.toml"))


def _project(path: Path) -> tuple[str, list[str]]:
    project = tomllib.loads((path / "pyproject.toml").read_text())["project"]
    return canonical(project["name"]), list(project.get("dependencies", []))


def _applies(requirement: Requirement) -> bool:
    return requirement.marker is None or requirement.marker.evaluate({"extra": ""})


def runtime_closure(repo: Path = REPO) -> set[str]:
    """Canonical names of every third-party distribution the runtime packages need."""
    ours = dict(_project(path) for path in runtime_packages(repo))
    needed: set[str] = set()
    todo = [Requirement(r) for deps in ours.values() for r in deps]
    while todo:
        requirement = todo.pop()
        name = canonical(requirement.name)
        if not _applies(requirement) or name in needed or name in ours:
            continue
        needed.add(name)
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue  # not installed: the split reports it missing from the lock
        todo.extend(Requirement(r) for r in requires)
    return needed


@dataclass(frozen=True)
class Split:
    runtime: list[str]
    dev: list[str]
    missing: list[str]  # runtime requirements no pin names


def split(pins: Iterable[str], repo: Path = REPO) -> Split:
    """`pins` ("name==version" lines) into the runtime closure and the rest."""
    closure = runtime_closure(repo)
    runtime: list[str] = []
    dev: list[str] = []
    for pin in sorted(set(pins), key=lambda p: canonical(p.split("==")[0])):
        (runtime if canonical(pin.split("==")[0]) in closure else dev).append(pin)
    pinned = {canonical(p.split("==")[0]) for p in runtime}
    return Split(runtime, dev, sorted(closure - pinned))


def read_pins(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def _frozen() -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True, check=True
    ).stdout
    return [line for line in out.splitlines() if line and not canonical(line).startswith("meshcast")]


def _text(header: tuple[str, ...], pins: list[str]) -> str:
    return "\n".join([*header, *pins]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshcast.devtools.lock", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only check the committed split")
    args = parser.parse_args(argv)
    if args.check:
        result = split(read_pins(REPO / RUNTIME_LOCK) + read_pins(REPO / DEV_LOCK))
        wrong = result.runtime != read_pins(REPO / RUNTIME_LOCK) or result.missing
        if wrong:
            print(f"{RUNTIME_LOCK} is not the runtime closure (missing: {result.missing}): run `make lock`")
            return 1
        return 0
    result = split(_frozen())
    if result.missing:
        print(f"not installed, cannot pin: {', '.join(result.missing)}", file=sys.stderr)
        return 1
    (REPO / RUNTIME_LOCK).write_text(_text(_RUNTIME_HEADER, result.runtime))
    (REPO / DEV_LOCK).write_text(_text(_DEV_HEADER, result.dev))
    print(f"{RUNTIME_LOCK}: {len(result.runtime)} pins, {DEV_LOCK}: {len(result.dev)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
