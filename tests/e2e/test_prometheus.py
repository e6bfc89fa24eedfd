"""A real Prometheus (Debian's ``prometheus``) scraping every Meshcast service as
subprocesses, with the alert rules of monitoring/alerts.yaml loaded: what PromQL says
about the stack is what the stack is."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshcast.testing import free_port, timeout, wait_until_async, within
from meshcast.testing.monitoring import ScrapeTarget, monitored_stack
from meshcast.testing.spawn import spawn
from meshcast.testing.tools import require_tool

from .conftest import ROOT, SECRET
from .sdk import connected, sdk_client, subscribed

pytestmark = pytest.mark.e2e

ALERTS = ROOT / "monitoring" / "alerts.yaml"
CLIENTS = 3
# Scrapes and rule evaluations this often: the queries see a change within a few seconds.
INTERVAL = "1s"


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=timeout(5)) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=promql)["result"]
        return result

    def scalar(self, promql: str) -> float | None:
        """The value of a one-sample query, None while it has none."""
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None


def _config(targets: list[ScrapeTarget]) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": INTERVAL, "evaluation_interval": INTERVAL, "scrape_timeout": INTERVAL},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": target.job, "static_configs": [{"targets": [target.address]}]} for target in targets
        ],
    }


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=timeout(1)) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[list[ScrapeTarget]]:
    with monitored_stack(tmp_path / "stack", secret=SECRET) as targets:
        yield targets


@pytest.fixture
def prometheus(stack: list[ScrapeTarget], tmp_path: Path) -> Iterator[Prometheus]:
    binary = require_tool("prometheus", "Debian's prometheus package: apt-get install prometheus (.ci/run installs it)")
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(_config(stack)))
    port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("ab") as out:
        process = spawn(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + timeout(15)
        while not _ready(server.url):
            assert process.poll() is None, f"prometheus exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"prometheus not ready:\n{log.read_text()[-3000:]}"
            time.sleep(0.05)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout(10))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout(5))


async def _until(server: Prometheus, promql: str, expected: float, seconds: float = 15) -> None:
    async def matches() -> bool:
        return await asyncio.to_thread(server.scalar, promql) == expected

    try:
        await wait_until_async(matches, seconds, what=f"{promql} == {expected}", every=0.25)
    except TimeoutError:
        raise AssertionError(f"{promql} is {server.scalar(promql)}, not {expected}") from None


async def test_prometheus_counts_the_connected_clients(prometheus: Prometheus, stack: list[ScrapeTarget]) -> None:
    gateway = next(target for target in stack if target.job == "meshcast-gateway")
    url = f"ws://{gateway.address}/connection/websocket"
    clients = [sdk_client(url, f"user-{i}") for i in range(CLIENTS)]
    try:
        await connected(*clients)
        await _until(prometheus, "sum(meshcast_gateway_connections)", CLIENTS)
        # A publication reaches a subscriber: one delivery latency observed, one publish command timed.
        recorder = await subscribed(clients[1], "chat:metrics")
        await within(clients[2].publish("chat:metrics", {"n": 1}))
        await recorder.next()
        await _until(prometheus, "sum(meshcast_gateway_delivery_latency_seconds_count)", 1)
        await _until(prometheus, 'sum(meshcast_gateway_command_seconds_count{method="publish"})', 1)
        await clients[0].disconnect()
        await _until(prometheus, "sum(meshcast_gateway_connections)", CLIENTS - 1)
    finally:
        for client in clients:
            await client.disconnect()

    # Every service is scraped, and the rules loaded: each one is known by its build.
    await _until(prometheus, "count(meshcast:service_up == 1)", len(stack))
    services = {sample["metric"]["service"] for sample in prometheus.query("meshcast:service_up")}
    assert services == {target.job for target in stack}
    groups = prometheus.api("rules")["groups"]
    assert {rule["name"] for group in groups for rule in group["rules"]} >= {
        "MeshcastGatewayDown",
        "MeshcastNatsDisconnected",
    }
    assert not prometheus.query('ALERTS{alertstate="firing", severity="critical"}')
