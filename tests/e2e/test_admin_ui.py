"""The admin UI (`/admin`) in Debian's headless Chromium against real processes.

NATS with a user per service, history, presence, a gateway and the API with
``MESHCAST_ADMIN_SECRET`` as subprocesses (`apistack.running_api_stack`); a
centrifuge-python client subscribed to a channel; `js/admin_ui.mjs`
(playwright-core, the browser at ``/usr/bin/chromium``) logs in through the
page, finds the gateway and the channel with its one subscriber, looks up
presence, publishes (the Python client receives it), disconnects the user
(the Python client is closed with 3503) and saves a screenshot into the test's
tmp dir, whose path is printed. Chromium missing: skipped with the reason, a
failure in CI.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshcast.protocol import DisconnectCode
from meshcast.testing import timeout, within, ws_url
from meshcast.testing.tools import find_tool, require_tool, unavailable

from .apistack import ApiStack, running_api_stack
from .sdk import ConnectionEvents, connected, disconnected, sdk_client, subscribed

pytestmark = pytest.mark.e2e

JS_DIR = Path(__file__).parent / "js"
SCRIPT = JS_DIR / "admin_ui.mjs"
ADMIN_SECRET = "e2e-admin-secret-0123456789"
CHANNEL = "chat:admin-ui"
USER = "ada"


@pytest.fixture(scope="module")
def browser() -> tuple[str, str]:
    """node (with playwright-core installed by `make e2e`) and Debian's chromium."""
    node = require_tool("node", "Node.js: Debian's nodejs and npm, installed by .ci/run")
    if not (JS_DIR / "node_modules" / "playwright-core").exists():
        unavailable("playwright-core is not installed in tests/e2e/js: run `make e2e` (npm ci)")
    chromium = find_tool("chromium")
    if chromium is None:
        unavailable("chromium is not installed (Debian's: apt-get install -y chromium; .ci/run installs it)")
    return node, chromium


@pytest.fixture(scope="module")
def admin_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiStack]:
    with running_api_stack(
        tmp_path_factory.mktemp("admin"), gateways=1, api_env={"MESHCAST_ADMIN_SECRET": ADMIN_SECRET}
    ) as stack:
        yield stack


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout(10)) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code


def test_admin_api_without_a_session_is_401_and_a_wrong_secret_is_refused(admin_stack: ApiStack) -> None:
    base = admin_stack.base.removesuffix("/api")
    csrf = {"X-Meshcast-Admin": "1", "Content-Type": "application/json"}
    assert _post(f"{base}/admin/api/info", b"{}", csrf) == 401
    assert _post(f"{base}/admin/api/info", b"{}", {**csrf, "X-API-Key": "e2e-api-key-0123456789"}) == 401
    assert _post(f"{base}/admin/login", json.dumps({"secret": "wrong"}).encode(), csrf) == 401
    assert _post(f"{base}/admin/login", json.dumps({"secret": ADMIN_SECRET}).encode(), {}) == 403  # no CSRF header
    assert _post(f"{base}/admin/login", json.dumps({"secret": ADMIN_SECRET}).encode(), csrf) == 200


async def _steps(proc: asyncio.subprocess.Process) -> AsyncIterator[Any]:
    """The script's JSON lines, as they come."""
    assert proc.stdout is not None
    while line := await within(proc.stdout.readline(), 60):
        yield json.loads(line)


async def test_the_admin_ui_in_chromium_sees_publishes_and_disconnects(
    admin_stack: ApiStack, browser: tuple[str, str], tmp_path: Path
) -> None:
    node, chromium = browser
    events = ConnectionEvents()
    client = sdk_client(ws_url(admin_stack.gateways[0]), USER, events=events)
    await connected(client)
    recorder = await subscribed(client, CHANNEL)
    screenshot = tmp_path / "admin-ui.png"
    data = {"from": "admin-ui", "n": 1}
    base = admin_stack.base.removesuffix("/api")
    args = [SCRIPT, base, ADMIN_SECRET, CHANNEL, USER, screenshot, tmp_path / "chromium-profile", json.dumps(data)]
    proc = await asyncio.create_subprocess_exec(
        node,
        *map(str, args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "CHROMIUM": chromium},
    )
    seen: list[Any] = []
    try:
        async for step in _steps(proc):
            seen.append(step)
            if step.get("step") == "published":
                assert await recorder.next(5) == data
            elif step.get("step") == "disconnected":
                await events.wait_for_code(int(DisconnectCode.FORCE_NO_RECONNECT), 5)
            elif step.get("step") == "screenshot":
                print(f"admin UI screenshot: {step['path']}")
        assert proc.stderr is not None
        stderr = (await within(proc.stderr.read(), 10)).decode()
        assert await within(proc.wait(), 10) == 0, f"{seen}\n{stderr}"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await disconnected(client)
    assert seen[-1] == {"ok": True}
    assert [s["step"] for s in seen if "step" in s] == [
        "login page",
        "wrong secret refused",
        "logged in",
        "nodes",
        "channels",
        "presence",
        "published",
        "chart",
        "screenshot",
        "disconnected",
        "channel vacated",
        "logged out",
    ]
    assert screenshot.stat().st_size > 10_000
