"""The unmodified centrifuge-js SDK (Node.js) against two gateway processes."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshcast.devtools.tokens import connection_token
from meshcast.testing import NatsServer, ServiceProcess, gateway_process, history_process, running, timeout, ws_url
from meshcast.testing.tools import require_tool, unavailable

from .conftest import NAMESPACES, SECRET

JS_DIR = Path(__file__).parent / "js"

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def node() -> str:
    """node, with the pinned centrifuge-js installed (`make test` runs `npm ci`)."""
    found = require_tool("node", "Node.js: Debian's nodejs and npm, installed by .ci/run")
    if not (JS_DIR / "node_modules" / "centrifuge").exists():
        unavailable("centrifuge-js is not installed in tests/e2e/js: run `make e2e` (npm ci)")
    return found


@pytest.fixture
def gateways_on_one_node(nats_server: NatsServer, tmp_path: Path) -> Iterator[list[ServiceProcess]]:
    procs = [
        gateway_process(tmp_path, [nats_server.url], secret=SECRET, namespaces_file=NAMESPACES, name=f"gw{i}")
        for i in range(2)
    ]
    history = history_process(tmp_path, [nats_server.url], namespaces_file=NAMESPACES)
    with running(history, *procs):
        yield procs


@pytest.mark.parametrize("fmt", ["json", "protobuf"])
def test_centrifuge_js_publishes_and_receives_across_gateways(
    node: str, gateways_on_one_node: list[ServiceProcess], fmt: str
) -> None:
    sub_gw, pub_gw = gateways_on_one_node
    count = 20
    result = subprocess.run(
        [
            node,
            str(JS_DIR / "client.js"),
            fmt,
            ws_url(sub_gw),
            ws_url(pub_gw),
            connection_token(SECRET, "bob"),
            connection_token(SECRET, "alice"),
            "chat:js",
            str(count),
        ],
        capture_output=True,
        text=True,
        timeout=timeout(40),
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines[-1] == "done"
    received = [json.loads(line) for line in lines[:-1]]
    assert received == [{"data": {"n": i}, "user": "alice"} for i in range(count)]


def test_centrifuge_js_recovers_missed_publications(node: str, gateways_on_one_node: list[ServiceProcess]) -> None:
    gateway, _ = gateways_on_one_node
    missed = 25
    result = subprocess.run(
        [node, str(JS_DIR / "recover.js"), ws_url(gateway), connection_token(SECRET, "js"), "chat:jsrec", str(missed)],
        capture_output=True,
        text=True,
        timeout=timeout(40),
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "done"
    events = [json.loads(line) for line in lines[:-1]]
    assert events[0] == {"subscribed": {"wasRecovering": True, "recovered": True}}
    pubs = events[1:]
    assert [e["pub"] for e in pubs] == [{"n": i} for i in range(1, missed + 1)]
    offsets = [e["offset"] for e in pubs]
    assert offsets == sorted(set(offsets))
