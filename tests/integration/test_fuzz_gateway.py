"""A running gateway fed random frames: no crash, only specified answers, others unaffected."""

from __future__ import annotations

import asyncio
import json
import threading
import time
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
from meshcast.proto.client_pb2 import Command, ConnectRequest
from meshcast.protocol import Format
from meshcast.protocol.codec import encode_varint
from meshcast.testing import NatsServer, timeout
from meshcast.testing.raw import replies as raw_replies

from .harness import gateway_settings, token

# What a fuzzed connection may legitimately end with.
ALLOWED_CLOSE = {1000, 1002, 1007, 1009, 3500, 3501, 3502, 3508}
ALLOWED_ERRORS = set(range(100, 113))


class GatewayThread:
    """A gateway on its own event loop in a thread, so sync clients can drive it."""

    def __init__(self, nats_url: str, namespaces: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.gateway = Gateway(
            gateway_settings(nats_url, namespaces, handshake_timeout=0.5, max_message_size=4096, drain_seconds=0)
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


PROBE_ID = 4_242_424


def _probe(protobuf: bool) -> bytes | str:
    """A command every live connection answers at once: connect (protobuf, not yet
    connected) or a subscribe to a channel without history (JSON, connected)."""
    if not protobuf:
        return json.dumps({"id": PROBE_ID, "subscribe": {"channel": "chat:fuzz-probe"}})
    data = Command(id=PROBE_ID, connect=ConnectRequest(token=token("fuzz"))).SerializeToString()
    return encode_varint(len(data)) + data


def exchange(url: str, frames: list[bytes | str], protobuf: bool) -> tuple[list[Any], int | None]:
    """Send frames after a valid connect, then a probe command; what came back
    (the probe's reply last), and the close code if the gateway closed instead.

    A connection that stays open must answer the probe in time: a hang fails."""
    fmt = Format.PROTOBUF if protobuf else Format.JSON
    replies: list[Any] = []
    with connect(url, subprotocols=["centrifuge-protobuf"] if protobuf else None, open_timeout=timeout(5)) as ws:  # type: ignore[list-item]
        if not protobuf:
            ws.send(json.dumps({"id": 1, "connect": {"token": token("fuzz")}}))
            replies.append(ws.recv(timeout=timeout(5)))
        try:
            for frame in frames:
                ws.send(frame)
            ws.send(_probe(protobuf))
            deadline = time.monotonic() + timeout(5)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"the gateway neither answered the probe nor closed: {replies}")
                raw = ws.recv(timeout=remaining)
                replies.append(raw)
                if any(r.get("id") == PROBE_ID for r in decoded(fmt, raw)):
                    return replies, None
        except TimeoutError as exc:
            raise AssertionError(f"the gateway neither answered the probe nor closed: {replies}") from exc
        except ConnectionClosed:
            return replies, ws.close_code


def decoded(fmt: Format, raw: bytes | str) -> list[dict[str, Any]]:
    """The frame's replies; protobuf ids come back as ints."""
    return [{**r, "id": int(r["id"])} if "id" in r else r for r in raw_replies(fmt, raw)]


frames = st.lists(st.binary(max_size=300) | st.text(max_size=300), min_size=1, max_size=3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=frames, protobuf=st.booleans())
def test_random_frames_get_specified_answers_only(
    running: GatewayThread, batch: list[bytes | str], protobuf: bool
) -> None:
    replies, code = exchange(running.url, list(batch), protobuf)
    assert code is None or code in ALLOWED_CLOSE, code
    fmt = Format.PROTOBUF if protobuf else Format.JSON
    for raw in replies[0 if protobuf else 1 :]:
        for reply in decoded(fmt, raw):
            assert isinstance(reply, dict)
            if "error" in reply:
                assert reply["error"]["code"] in ALLOWED_ERRORS, reply
    if code is None:  # still open: the probe was answered, and by a connected session
        probe = next(r for raw in replies for r in decoded(fmt, raw) if r.get("id") == PROBE_ID)
        assert "error" not in probe or probe["error"]["code"] in ALLOWED_ERRORS, probe
    with urllib.request.urlopen(f"http://127.0.0.1:{running.gateway.port}/health", timeout=timeout(5)) as resp:
        assert resp.status == 200
