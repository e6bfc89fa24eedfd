"""Trace context crosses NATS: a client's publish and its deliveries share one trace."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.msg import Msg
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from meshcast.bus import Subjects, connect
from meshcast.common.telemetry import DESTINATION, install, sampled, uninstall
from meshcast.gateway.app import Gateway
from meshcast.history.app import HistoryApp
from meshcast.proto import proxy_pb2 as proxy
from meshcast.testing import timeout, wait_until_async

from .harness import GatewayFactory, connected_client, history_settings

_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """The OpenTelemetry SDK with an in-memory exporter (a provider can be set once a process);
    tracing is off again for the tests after these, and the exporter keeps nothing more."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
    install(provider)  # the process's provider, and the guarded trace work on
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    yield _EXPORTER
    uninstall()
    _EXPORTER.clear()
    _EXPORTER.shutdown()


NAMESPACES = """
namespaces:
  - name: room
    history_size: 10
    history_ttl: 60
    allow_publish: true
  - name: replay
    history_size: 10
    history_ttl: 60
    recovery: true
    allow_publish: true
default:
  allow_publish: true
"""


async def test_publish_and_delivery_are_one_trace(
    spans: InMemorySpanExporter, make_gateway: GatewayFactory, nats_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "ns.yaml"
    path.write_text(NAMESPACES)
    history = HistoryApp(history_settings(nats_url, path))
    await history.start()
    try:
        gateway: Gateway = await make_gateway(NAMESPACES)
        bob = await connected_client(gateway, "bob")
        alice = await connected_client(gateway, "alice")
        spans.clear()
        for channel in ("lobby", "room:traced"):
            await bob.command("subscribe", {"channel": channel})
            await alice.command("publish", {"channel": channel, "data": {"x": 1}})
            await bob.next_push()
        await wait_until_async(
            lambda: sum(s.name == "meshcast.deliver" for s in spans.get_finished_spans()) >= 2, what="spans"
        )
        finished = spans.get_finished_spans()
        publishes = [s for s in finished if s.name == "meshcast.publish"]
        deliveries = [s for s in finished if s.name == "meshcast.deliver"]
        assert {s.attributes[DESTINATION] for s in publishes if s.attributes} == {"lobby", "room:traced"}
        for publish in publishes:
            assert publish.context is not None
            children = [d for d in deliveries if d.parent is not None and d.parent.span_id == publish.context.span_id]
            assert children, f"no delivery span under {publish.attributes}"
            assert all(d.context is not None and d.context.trace_id == publish.context.trace_id for d in children)
        # The history service traces the requests it answers (here: the subscribe's position read).
        assert any(s.name == "meshcast.history.position" for s in finished)
    finally:
        await history.stop()


PROXIED = """
namespaces:
  - name: gated
    proxy_subscribe: true
"""


async def test_a_delegated_decision_is_a_client_span_whose_context_reaches_the_backend(
    spans: InMemorySpanExporter, make_gateway: GatewayFactory, nats_url: str
) -> None:
    """The backend's request carries the gateway's ``traceparent``: its own spans join the trace."""
    backend = await connect(nats_url, name="backend")
    seen: list[str] = []

    async def on_subscribe(msg: Msg) -> None:
        seen.append((msg.headers or {}).get("traceparent", ""))
        reply = proxy.SubscribeReply()
        reply.result.SetInParent()
        await msg.respond(reply.SerializeToString())

    try:
        await backend.subscribe(Subjects().proxy("subscribe"), cb=on_subscribe)
        await backend.flush()
        gateway: Gateway = await make_gateway(PROXIED, proxy_timeout=timeout(2))
        alice = await connected_client(gateway, "alice")
        spans.clear()
        reply = await alice.command("subscribe", {"channel": "gated:room"})
        assert "subscribe" in reply, reply
        [asked] = [s for s in spans.get_finished_spans() if s.name == "meshcast.proxy.subscribe"]
        [command] = [s for s in spans.get_finished_spans() if s.name == "meshcast.command.subscribe"]
        assert asked.kind is SpanKind.CLIENT
        assert asked.attributes is not None
        assert asked.attributes[DESTINATION] == "gated:room"
        assert asked.parent is not None
        assert command.context is not None
        assert asked.parent.span_id == command.context.span_id
        assert asked.context is not None
        [carried] = seen
        assert carried.startswith(f"00-{asked.context.trace_id:032x}-{asked.context.span_id:016x}-")
        assert sampled(carried)
    finally:
        await backend.close()


async def test_a_recovering_subscribe_is_one_trace_with_the_history_services_recovery(
    spans: InMemorySpanExporter, make_gateway: GatewayFactory, nats_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "ns.yaml"
    path.write_text(NAMESPACES)
    history = HistoryApp(history_settings(nats_url, path))
    await history.start()
    try:
        gateway: Gateway = await make_gateway(NAMESPACES)
        bob = await connected_client(gateway, "bob")
        alice = await connected_client(gateway, "alice")
        sub = (await bob.command("subscribe", {"channel": "replay:x"}))["subscribe"]
        await bob.command("unsubscribe", {"channel": "replay:x"})
        for n in range(2):
            await alice.command("publish", {"channel": "replay:x", "data": {"n": n}})
        spans.clear()
        position = {"channel": "replay:x", "recover": True, "epoch": sub["epoch"], "offset": sub.get("offset", 0)}
        recovered = (await bob.command("subscribe", position))["subscribe"]
        assert [p["data"] for p in recovered["publications"]] == [{"n": 0}, {"n": 1}]

        def named(name: str) -> list[ReadableSpan]:
            return [s for s in spans.get_finished_spans() if s.name == name]

        await wait_until_async(lambda: bool(named("meshcast.history.recover")), what="the recovery span")
        [command] = named("meshcast.command.subscribe")
        [recovery] = named("meshcast.history.recover")
        assert command.context is not None
        assert recovery.parent is not None
        assert recovery.parent.span_id == command.context.span_id
        assert recovery.attributes is not None
        assert recovery.attributes[DESTINATION] == "replay:x"
    finally:
        await history.stop()
