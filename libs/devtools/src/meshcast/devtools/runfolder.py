"""Where `make run` keeps its state, and how every devtools command finds it.

The run folder (``.run/`` at the project root, git-ignored) holds what
`make run` generates once and keeps: the NATS passwords, the token secret, the
server API key, nats-server's JetStream store, the logs, and the lock of the
running supervisor. Only `make run` creates anything there. The commands that
read it (`token`, `api-key`, `nats-url`) never do: a missing folder or file
is `NotStarted`, not a fresh secret the stack does not know.

Every command finds it the same way, whatever the working directory:
``--root`` when given (its ``.run/``), else ``MESHCAST_RUN_DIR``, else the
``.run/`` of the checkout this package is installed from (the nearest
directory above this file holding ``libs/devtools/pyproject.toml``; for a
non-editable install, the nearest such directory above the working one).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from .errors import NoProject, NotStarted

RUN_DIR_ENV: Final = "MESHCAST_RUN_DIR"
RUN_DIR_NAME: Final = ".run"
_MARKER: Final = Path("libs", "devtools", "pyproject.toml")
_HOW_TO_CHOOSE: Final = f"pass --root or set {RUN_DIR_ENV}"


def _checkout_above(start: Path) -> Path | None:
    for candidate in (start, *start.parents):
        if (candidate / _MARKER).is_file():
            return candidate
    return None


def project_root(explicit: Path | None = None) -> Path:
    """The Meshcast checkout: `explicit`, else the one holding this package, else the one above the cwd."""
    if explicit is not None:
        return explicit.resolve()
    found = _checkout_above(Path(__file__).resolve().parent) or _checkout_above(Path.cwd().resolve())
    if found is None:
        raise NoProject(
            f"cannot find the Meshcast checkout (no {_MARKER} above {Path(__file__).parent} or the working"
            f" directory): {_HOW_TO_CHOOSE}"
        )
    return found


def run_folder(explicit_root: Path | None = None) -> Path:
    """The run folder: `explicit_root`/.run, else ``MESHCAST_RUN_DIR``, else the checkout's .run/."""
    if explicit_root is None and (configured := os.environ.get(RUN_DIR_ENV, "").strip()):
        return Path(configured).expanduser().resolve()
    return project_root(explicit_root) / RUN_DIR_NAME


def not_started(run_dir: Path, what: str) -> NotStarted:
    """The error for a run folder without `what`: start `make run` first, and where we looked."""
    where = f"no run folder {run_dir} (looked for {what})" if not run_dir.is_dir() else f"no {what} in {run_dir}"
    return NotStarted(f"{where}: start `make run` first (or, for another run folder, {_HOW_TO_CHOOSE})")


def read_run_file(run_dir: Path, name: str) -> str:
    """The text `make run` wrote to `run_dir/name`, stripped; `NotStarted` when missing or empty."""
    try:
        text = (run_dir / name).read_text().strip()
    except FileNotFoundError:
        raise not_started(run_dir, name) from None
    if not text:
        raise not_started(run_dir, name)
    return text
