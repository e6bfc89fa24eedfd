"""Centrifugo (the reference, built once with go install) beside a Meshcast stack.

Both get the same namespaces (``namespaces.yaml``; Centrifugo's config is
generated from it), HMAC secret, API key and client limits. Meshcast runs
nats-server, history, presence, one gateway and the server API as subprocesses;
Centrifugo runs with its memory engine. One pair serves the whole package.

The reference is built during collection, outside any test's timeout: on a
fresh machine ``go install`` takes minutes (``docs/compatibility.md``), later
runs find it in the cache. Without Go the tests skip, and fail in CI.

``MESHCAST_CONFORMANCE=full`` (``make conformance``) runs every scripted
session; by default (``make test``) only the short ones.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshcast.common.namespaces import load_channels_config
from meshcast.testing import NatsServer, api_process, gateway_process, history_process, presence_process, running
from meshcast.testing.reference import CentrifugoProcess, ReferenceUnavailable, centrifugo_binary
from meshcast.testing.tools import unavailable

from .centrifugo_config import Limits, centrifugo_config
from .runner import Target

HERE = Path(__file__).parent
NAMESPACES = HERE / "namespaces.yaml"
SECRET = "conformance-secret-0123456789abcdef"
API_KEY = "conformance-api-key-0123456789"
# Small where a session runs into them: 4 channels, pings every 2 s (pong within 1 s),
# an expired connection or subscription closed 1 s after its exp (looked for every second).
LIMITS = Limits(channel_limit=4, ping_interval=2, pong_timeout=1, expiry_grace=1, expiry_check=1)

FULL = os.environ.get("MESHCAST_CONFORMANCE", "short").strip().lower() == "full"

_reference: Path | ReferenceUnavailable | None = None


def pytest_collection_modifyitems(session: pytest.Session, items: list[pytest.Item]) -> None:
    """Build the reference now, once, if any conformance test is selected."""
    global _reference
    if _reference is not None or not any(HERE in Path(str(item.path)).parents for item in items):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")

    def say(line: str) -> None:
        if reporter is not None:
            reporter.write_line(line)

    try:
        _reference = centrifugo_binary(log=say)
    except ReferenceUnavailable as exc:
        _reference = exc


@pytest.fixture(scope="package")
def reference_binary() -> Path:
    found = _reference
    if found is None:
        try:
            found = centrifugo_binary()
        except ReferenceUnavailable as exc:
            found = exc
    if isinstance(found, ReferenceUnavailable):
        unavailable(str(found))
    return found


@dataclass(frozen=True)
class Pair:
    centrifugo: Target
    meshcast: Target
    # gRPC API targets (host:port).
    centrifugo_grpc: str
    meshcast_grpc: str


@pytest.fixture(scope="package")
def pair(reference_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    workdir = tmp_path_factory.mktemp("conformance")
    channels = load_channels_config(NAMESPACES)
    config = centrifugo_config(channels, secret=SECRET, api_key=API_KEY, limits=LIMITS)
    centrifugo = CentrifugoProcess(reference_binary, workdir / "centrifugo", config)
    nats = NatsServer(workdir / "nats").start()
    urls = [nats.url]
    gateway = gateway_process(
        workdir,
        urls,
        secret=SECRET,
        namespaces_file=NAMESPACES,
        extra_env={**LIMITS.gateway_env(), "MESHCAST_PRESENCE_HEARTBEAT_INTERVAL": "0.5"},
    )
    api = api_process(workdir, urls, namespaces_file=NAMESPACES, api_key=API_KEY)
    try:
        centrifugo.start()
        with running(
            history_process(workdir, urls, namespaces_file=NAMESPACES), presence_process(workdir, urls), gateway, api
        ):
            yield Pair(
                Target("centrifugo", centrifugo.ws_url, centrifugo.api_url, API_KEY, SECRET),
                Target(
                    "meshcast",
                    f"ws://127.0.0.1:{gateway.env['_PORT']}/connection/websocket",
                    f"http://127.0.0.1:{api.env['_HTTP_PORT']}/api",
                    API_KEY,
                    SECRET,
                ),
                centrifugo.grpc_target,
                f"127.0.0.1:{api.env['_GRPC_PORT']}",
            )
    finally:
        centrifugo.stop()
        nats.stop()
