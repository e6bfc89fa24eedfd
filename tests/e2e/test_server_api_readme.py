"""The "From a backend" examples (services/api/README.md) run as written against a real stack.

The blocks use `make run`'s addresses; the test points them at the stack's own ports
and gives them the key as `$KEY`, as `export KEY=$(make -s api-key)` would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from meshcast.testing import timeout

from .apistack import KEY, ApiStack, api_stack

pytestmark = pytest.mark.e2e

__all__ = ["api_stack"]  # the module-scoped fixture, imported

README = Path(__file__).resolve().parents[2] / "services" / "api" / "README.md"


def _blocks(language: str) -> list[str]:
    text = README.read_text()
    section = text[text.index("## From a backend") :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def _pointed(code: str, stack: ApiStack) -> str:
    return code.replace("http://127.0.0.1:9000/api", stack.base).replace("127.0.0.1:10000", stack.grpc_target)


def _env() -> dict[str, str]:
    return {**os.environ, "KEY": KEY}


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_the_curl_examples_publish_and_read_history(api_stack: ApiStack) -> None:
    [sh] = _blocks("sh")
    lines = [line for line in sh.splitlines() if line.startswith("curl ")]
    outputs = [
        subprocess.run(
            ["sh", "-c", _pointed(line, api_stack)],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=timeout(30),
            check=True,
        ).stdout
        for line in lines
    ]
    assert json.loads(outputs[0]) == {"result": {}}
    assert json.loads(outputs[1])["result"]["offset"] >= 1
    assert {"text": "kept"} in [p["data"] for p in json.loads(outputs[2])["result"]["publications"]]


@pytest.mark.parametrize("index", [0, 1], ids=["cent", "grpc"])
def test_the_python_examples_run(api_stack: ApiStack, index: int) -> None:
    code = _pointed(_blocks("python")[index], api_stack)
    done = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=timeout(60), check=False
    )
    assert done.returncode == 0, done.stderr
    if index == 0:
        assert "stored at offset" in done.stdout
        assert "newest: {'text': 'hello from a backend'}" in done.stdout
    else:
        assert re.search(r"^offset \d+$", done.stdout, flags=re.M), done.stdout
