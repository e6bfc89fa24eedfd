"""Programs the tests build from sources in the tree, once per machine and per source.

`cached_build` keeps one artifact (a binary, a jar) under `cache_root()` in a folder
named after a digest of its sources, so editing a source builds anew and an
unchanged tree reuses the artifact (the e2e programs of the Go and Java SDKs,
``tests/e2e/sdk/``). As for the Centrifugo reference (`reference.py`): a lock keeps
two processes from building at once, the build runs in a staging folder and its
artifact is renamed into place, so a build killed half-way never looks finished.

Unavailable toolchains and failed builds raise `BuildUnavailable`; the tests pass
it to `tools.unavailable` (a skip on a developer's machine, a failure in CI).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from .reference import _locked, cache_root


class BuildUnavailable(RuntimeError):
    """A program cannot be built here: its toolchain is missing or its build failed."""


def sources_digest(root: Path, files: Iterable[str]) -> str:
    """A digest of the named files under `root` (names and contents)."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0")
        digest.update((root / name).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def cached_build(
    name: str,
    root: Path,
    files: Iterable[str],
    artifact: str,
    build: Callable[[Path], None],
    *,
    log: Callable[[str], None] | None = None,
) -> Path:
    """The path of `artifact`, built by `build(staging)` (which leaves it in `staging`)
    unless an artifact of the same sources is already in the cache."""
    folder = cache_root() / f"{name}-{sources_digest(root, files)}"
    target = folder / artifact
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder.with_name(folder.name + ".lock")):
        if target.is_file():  # another process built it while this one waited
            return target
        if log is not None:
            log(f"building {name} (once for these sources; cached in {folder})")
        staging = Path(tempfile.mkdtemp(prefix="build-", dir=folder))
        try:
            started = time.monotonic()
            build(staging)
            os.replace(staging / artifact, target)
            (folder / "build-seconds").write_text(f"{time.monotonic() - started:.1f}\n")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def run_build(argv: list[str], *, cwd: Path, env: Mapping[str, str] | None = None, seconds: float = 900) -> None:
    """Run one build command; `BuildUnavailable` with the end of its output if it fails
    or outlasts `seconds` (a registry out of reach shows there, not as a hang)."""
    try:
        done = subprocess.run(
            argv,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=seconds,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BuildUnavailable(f"{' '.join(argv)} did not finish within {seconds:g} s") from exc
    except OSError as exc:
        raise BuildUnavailable(f"{' '.join(argv)} could not start: {exc}") from exc
    if done.returncode != 0:
        output = (done.stdout + done.stderr)[-4000:]
        raise BuildUnavailable(f"{' '.join(argv)} failed ({done.returncode}) in {cwd}:\n{output}")
