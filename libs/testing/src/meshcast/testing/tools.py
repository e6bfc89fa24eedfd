"""External tools a test needs (kubectl, node, nats-server): found, or the test
cannot run.

On a developer's machine a missing tool skips the test with the way to get it;
in CI (``CI`` set to a true value, as ``.ci/run`` runs) it fails the test, so a
green run never hides a check that did not happen.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it in CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI must run every test: install it in .ci/run or the Makefile)", pytrace=False)
    pytest.skip(reason)


def find_tool(name: str) -> str | None:
    """A command on PATH, or installed by a wheel beside this interpreter."""
    found = shutil.which(name)
    if found is not None:
        return found
    beside_python = Path(sys.executable).with_name(name)
    return str(beside_python) if beside_python.exists() else None


def require_tool(name: str, how_to_get: str) -> str:
    """The path of `name`; otherwise skip (fail in CI) saying `how_to_get` it."""
    found = find_tool(name)
    if found is None:
        unavailable(f"{name} is not installed ({how_to_get})")
    return found
