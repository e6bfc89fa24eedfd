"""Every code block the READMEs mark runnable runs as written, so no snippet can rot.

One `make run` stack (``python -m meshcast.devtools run`` on free ports) and one fresh venv per
module: the venv is made by the README's own install block, run with ``sh -e`` in an empty
folder (a user's new project), so it holds exactly what the README tells a user to install.
Python blocks run there as scripts, shell blocks with ``sh -e``; each is pointed at the stack
(`readme_blocks.pointed`), gets the variables its mark says it needs, must exit 0 within a
bounded time, and what it prints is checked where there is something to check.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from meshcast.testing import free_port, timeout
from meshcast.testing.tools import require_tool

from .readme_blocks import INSTALL, MAKE_RUN_PORTS, READMES, ROOT, Block, Target, collect, marks, pointed

BLOCKS = collect()
INSTALL_SECONDS = 300  # a fresh venv and the packages from PyPI (pip caches nothing here)

# The module's first test also waits for the install (its fixture): the per-test timeout
# must cover it, or a slow PyPI fails every block at once.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(timeout(INSTALL_SECONDS + 120))]
BLOCK_SECONDS = 60
VENV = ".venv"  # where the install block makes the project's venv


def _lines(out: str) -> list[str]:
    return out.strip().splitlines()


def _json_lines(out: str) -> list[Any]:
    """The JSON values `out` holds one after another (curl adds no newline after each)."""
    decoder, text = json.JSONDecoder(), out.strip()
    values, at = [], 0
    while at < len(text):
        value, end = decoder.raw_decode(text, at)
        values.append(value)
        at = len(text) - len(text[end:].lstrip())
    return values


def _check_server_api_curl(out: str) -> None:
    published, history = _json_lines(out)
    assert published["result"]["offset"] >= 1
    assert {"text": "kept"} in [p["data"] for p in history["result"]["publications"]]


def _check_api_curl(out: str) -> None:
    no_history, *rest = _json_lines(out)
    assert no_history == {"result": {}}
    _check_server_api_curl("".join(json.dumps(value) for value in rest))


def _check_recovery(out: str) -> None:
    lines = _lines(out)
    assert lines[:2] == ["starting at the current position", "subscribed, recovered: True"], out
    assert re.fullmatch(r"resuming from offset \d+", lines[2]), out
    assert lines[3:] == [
        "subscribed, recovered: True",
        "got {'text': 'missed 0'}",
        "got {'text': 'missed 1'}",
        "got {'text': 'missed 2'}",
    ], out


def _matches(*patterns: str) -> Callable[[str], None]:
    def check(out: str) -> None:
        for pattern in patterns:
            assert re.search(pattern, out, flags=re.M), f"no {pattern!r} in:\n{out}"

    return check


# What each block prints, by name; a name here that no README marks fails the suite.
CHECKS: dict[str, Callable[[str], None]] = {
    "sdk-chat": _matches(r"^got \{'text': 'hello'\} from alice$"),
    "server-api-curl": _check_server_api_curl,
    "bus-publish": _matches(r"^stored at offset [1-9]\d*$"),
    "sdk-recovery": _check_recovery,
    "api-curl": _check_api_curl,
    "api-cent": _matches(r"^stored at offset \d+ in epoch \S+$", r"^newest: \{'text': 'hello from a backend'\}$"),
    "api-grpc": _matches(r"^offset \d+$"),
    "auth-grpc": _matches(
        r"^token for carol, jti \S+ expires at \d+$", r"^carol's tokens issued before \d+ are revoked$"
    ),
}


@dataclass
class World:
    """The stack the blocks talk to and the venv the Python blocks run in."""

    target: Target
    project: Path  # the user's project folder, where the install block ran
    installed: subprocess.CompletedProcess[str]

    @property
    def python(self) -> Path:
        return self.project / VENV / "bin" / "python"

    def ask(self, *args: str) -> str:
        """What `make api-key` / `make token` / the devtools print for this stack."""
        done = subprocess.run(
            [sys.executable, "-m", "meshcast.devtools", "--root", str(self.target.root), *args],
            capture_output=True,
            text=True,
            timeout=timeout(30),
            check=True,
        )
        return done.stdout.strip()

    def needs(self, block: Block) -> dict[str, str]:
        values = {
            "KEY": lambda: self.ask("api-key"),
            "TOKEN": lambda: self.ask("token", "--user", "alice"),
            "NATS_URL": lambda: self.ask("nats-url", "--nats-port", str(self.target.ports["nats"])),
        }
        unknown = set(block.needs) - set(values)
        assert not unknown, f"{block.where}: no value for {sorted(unknown)}"
        return {name: values[name]() for name in block.needs}


def _install_block() -> Block:
    [block] = [b for b in BLOCKS if b.name == INSTALL]
    return block


def _user_env() -> dict[str, str]:
    """The caller's environment without the repository's venv being active."""
    return {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}


def _free_ports() -> dict[str, int]:
    ports: set[int] = set()
    while len(ports) < len(MAKE_RUN_PORTS):
        ports.add(free_port())
    return dict(zip(MAKE_RUN_PORTS, sorted(ports), strict=True))


def _start_stack(target: Target, console: IO[str]) -> subprocess.Popen[str]:
    """`make run` (one gateway, make run's namespaces) in the stack's own folder, on its ports."""
    root = target.root
    (root / "config").mkdir(parents=True)
    (root / "config" / "namespaces.yaml").write_text((ROOT / "config" / "namespaces.yaml").read_text())
    args = ["run", "--gateways", "1"]
    for name, (flag, _) in MAKE_RUN_PORTS.items():
        args += [flag, str(target.ports[name])]
    env = {k: v for k, v in _user_env().items() if k not in ("MESHCAST_TOKEN_HMAC_SECRET", "MESHCAST_API_KEY")}
    return subprocess.Popen(
        [sys.executable, "-m", "meshcast.devtools", "--root", str(root), *args],
        cwd=root,
        env=env,
        stdout=console,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_banner(proc: subprocess.Popen[str], console: Path) -> None:
    deadline = time.monotonic() + timeout(60)
    while "Ctrl-C stops everything" not in console.read_text():
        assert proc.poll() is None, f"make run exited {proc.returncode}:\n{console.read_text()}"
        assert time.monotonic() < deadline, f"no banner:\n{console.read_text()}"
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[str]) -> None:
    """Ctrl-C, as a terminal sends it; killed if it does not stop."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout(60))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout(10))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The install runs while the stack starts: the two are most of the module's time."""
    project = tmp_path_factory.mktemp("project")
    target = Target(tmp_path_factory.mktemp("meshcast"), _free_ports(), sys.executable)
    installing = subprocess.Popen(
        ["sh", "-e", "-c", pointed(_install_block(), target)],
        cwd=project,
        env=_user_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    console_path = target.root / "console.log"
    with console_path.open("w") as console:
        proc = _start_stack(target, console)
        try:
            _wait_for_banner(proc, console_path)
            out, _ = installing.communicate(timeout=timeout(INSTALL_SECONDS))
            installed = subprocess.CompletedProcess(installing.args, installing.returncode, out, "")
            yield World(target, project, installed)
        finally:
            if installing.poll() is None:
                installing.kill()
                installing.communicate()
            _stop(proc)


def test_every_runnable_mark_heads_a_block_and_every_check_has_one() -> None:
    for path in READMES:
        assert marks(path) == len([b for b in BLOCKS if b.path == path]), f"{path}: a runnable mark with no block"
    names = {block.name for block in BLOCKS}
    assert INSTALL in names
    assert set(CHECKS) <= names, f"checks for blocks no README marks: {sorted(set(CHECKS) - names)}"


def _run(block: Block, world: World, workdir: Path) -> subprocess.CompletedProcess[str]:
    code = pointed(block, world.target)
    if block.lang == "sh":
        if re.search(r"\bcurl\b", code):
            require_tool("curl", "apt-get install curl")
        return subprocess.run(
            ["sh", "-e", "-c", code],
            cwd=workdir,
            env=_user_env(),
            capture_output=True,
            text=True,
            timeout=timeout(BLOCK_SECONDS),
            check=False,
        )
    script = workdir / f"{block.name}.py"
    script.write_text(code)
    env = {"PATH": f"{world.python.parent}{os.pathsep}{os.environ['PATH']}", "HOME": os.environ.get("HOME", "/")}
    return subprocess.run(
        [str(world.python), str(script)],
        cwd=workdir,
        env={**env, **world.needs(block)},
        capture_output=True,
        text=True,
        timeout=timeout(BLOCK_SECONDS),
        check=False,
    )


@pytest.mark.parametrize("block", BLOCKS, ids=[block.name for block in BLOCKS])
def test_block_runs_as_written(block: Block, world: World, tmp_path: Path) -> None:
    assert block.lang in ("sh", "python"), f"{block.where}: runnable block in {block.lang!r}, which no runner handles"
    if block.name == INSTALL:
        done = world.installed
        assert done.returncode == 0, f"{block.where} failed:\n{done.stdout}"
        assert world.python.exists(), f"{block.where} made no {VENV} in the project folder"
        return
    done = _run(block, world, tmp_path)
    assert done.returncode == 0, f"{block.where} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    check = CHECKS.get(block.name)
    if check is not None:
        check(done.stdout)
