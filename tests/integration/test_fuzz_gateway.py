"""A running gateway fed random frames: no crash, only specified answers, others unaffected."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from meshcast.gateway.app import Gateway
from meshcast.gateway.settings import GatewaySettings
from meshcast.testing import NatsServer

from .harness import SECRET, token

# What a fuzzed connection may legitimately end with.
ALLOWED_CLOSE = {1000, 1002, 1007, 1009, 3500, 3501, 3502}
ALLOWED_ERRORS = set(range(100, 113))


class GatewayThread:
    """A gateway on its own event loop in a thread, so sync clients can drive it."""

    def __init__(self, nats_url: str, namespaces: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.gateway = Gateway(
            GatewaySettings(
                nats_url=nats_url,
                gateway_host="127.0.0.1",
                gateway_port=0,
                token_hmac_secret=SECRET,
                namespaces_file=namespaces,
                handshake_timeout=0.5,
                max_message_size=4096,
                drain_seconds=0,
            )
        )
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> GatewayThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.gateway.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.gateway.stop(), self.loop).result(15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.gateway.port}/connection/websocket"


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    tmp = tmp_path_factory.mktemp("fuzz")
    server = NatsServer(tmp / "nats").start()
    namespaces = tmp / "ns.yaml"
    namespaces.write_text("namespaces:\n  - name: chat\n    allow_publish: true\n")
    try:
        with GatewayThread(server.url, namespaces) as running:
            yield running
    finally:
        server.stop()


def exchange(url: str, frames: list[bytes | str], protobuf: bool) -> tuple[list[Any], int | None]:
    """Send frames after a valid connect; what came back, and the close code if closed."""
    replies: list[Any] = []
    with connect(url, subprotocols=["centrifuge-protobuf"] if protobuf else None, open_timeout=5) as ws:  # type: ignore[list-item]
        if not protobuf:
            ws.send(json.dumps({"id": 1, "connect": {"token": token("fuzz")}}))
            replies.append(json.loads(ws.recv(timeout=5)))
        try:
            for frame in frames:
                ws.send(frame)
            while True:
                replies.append(ws.recv(timeout=0.3))
        except TimeoutError:
            return replies, None
        except ConnectionClosed:
            return replies, ws.close_code


frames = st.lists(st.binary(max_size=300) | st.text(max_size=300), min_size=1, max_size=3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=frames, protobuf=st.booleans())
def test_random_frames_get_specified_answers_only(
    running: GatewayThread, batch: list[bytes | str], protobuf: bool
) -> None:
    replies, code = exchange(running.url, list(batch), protobuf)
    assert code is None or code in ALLOWED_CLOSE, code
    if not protobuf:
        for raw in replies[1:]:
            for line in (raw.decode() if isinstance(raw, bytes) else raw).split("\n"):
                reply = json.loads(line)
                assert isinstance(reply, dict)
                if "error" in reply:
                    assert reply["error"]["code"] in ALLOWED_ERRORS
    with urllib.request.urlopen(f"http://127.0.0.1:{running.gateway.port}/health", timeout=5) as resp:
        assert resp.status == 200
