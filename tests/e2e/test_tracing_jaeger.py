"""Traces in a real Jaeger: one client operation is one trace across every process it touches.

Two gateways, the history, presence and API services run as subprocesses with
OpenTelemetry's standard environment pointing at a Jaeger all-in-one (built once
into the tools cache: `meshcast.testing.jaeger`, at collection, see ``conftest.py``).
The unmodified centrifuge-python SDK publishes through gateway 1 to subscribers on
both gateways; Jaeger's query API then has to return the trace with the command
span, the publish into JetStream and one delivery span per gateway, each gateway a
process of its own (same ``service.name``, its own ``service.instance.id``).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from centrifuge import Client

from meshcast.common.telemetry import DESTINATION
from meshcast.testing import (
    NatsCluster,
    ServiceProcess,
    gateway_process,
    history_process,
    presence_process,
    running,
    wait_until_async,
    within,
    ws_url,
)
from meshcast.testing.builds import BuildUnavailable
from meshcast.testing.jaeger import JaegerProcess, prebuild
from meshcast.testing.processes import api_process
from meshcast.testing.tools import unavailable

from .conftest import NAMESPACES, SECRET
from .sdk import connected, disconnected, sdk_client, subscribed

pytestmark = pytest.mark.e2e

API_KEY = "tracing-e2e-api-key"
CHANNEL = "chat:traced"
# Spans leave a service within a tenth of a second (BatchSpanProcessor's delay).
TRACING_ENV = {"OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_TRACES_SAMPLER": "parentbased_always_on"}


@pytest.fixture
def jaeger(tmp_path: Path) -> Iterator[JaegerProcess]:
    binary = prebuild()
    if isinstance(binary, BuildUnavailable):
        unavailable(str(binary))
    process = JaegerProcess(binary, tmp_path / "jaeger").start()
    try:
        yield process
    finally:
        process.stop()


@dataclass
class Stack:
    gateways: tuple[ServiceProcess, ServiceProcess]
    api: ServiceProcess


@pytest.fixture
def traced_stack(nats_cluster: NatsCluster, jaeger: JaegerProcess, tmp_path: Path) -> Iterator[Stack]:
    urls = nats_cluster.urls
    env = {**TRACING_ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_endpoint}
    gateways = [
        gateway_process(
            tmp_path,
            [urls[i], *urls[:i], *urls[i + 1 :]],
            secret=SECRET,
            namespaces_file=NAMESPACES,
            name=f"gateway-{i + 1}",
            extra_env={**env, "MESHCAST_NATS_RANDOMIZE": "false"},
        )
        for i in range(2)
    ]
    history = history_process(tmp_path, urls, namespaces_file=NAMESPACES, extra_env=env)
    presence = presence_process(tmp_path, urls, extra_env=env)
    api = api_process(tmp_path, urls, namespaces_file=NAMESPACES, api_key=API_KEY, extra_env=env)
    with running(history, presence, api, *gateways):
        yield Stack((gateways[0], gateways[1]), api)


def _tags(tags: list[dict[str, Any]]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in tags}


@dataclass
class Span:
    name: str
    service: str
    instance: str
    tags: dict[str, Any]
    span_id: str
    parent: str | None


def _spans(trace: dict[str, Any]) -> list[Span]:
    """A Jaeger trace's spans with their process's service and instance."""
    processes = {pid: (p["serviceName"], _tags(p.get("tags", []))) for pid, p in trace["processes"].items()}
    found = []
    for s in trace["spans"]:
        service, resource = processes[s["processID"]]
        parents = [r["spanID"] for r in s.get("references", []) if r.get("refType") == "CHILD_OF"]
        found.append(
            Span(
                s["operationName"],
                service,
                str(resource.get("service.instance.id", "")),
                _tags(s.get("tags", [])),
                s["spanID"],
                parents[0] if parents else None,
            )
        )
    return found


async def _trace_with(
    jaeger: JaegerProcess, service: str, root: str, complete: Callable[[list[Span]], bool]
) -> list[Span]:
    """The spans of the trace of `service` whose span `root` is on CHANNEL, once `complete(spans)`."""
    result: list[Span] = []

    def found() -> bool:
        for trace in jaeger.traces(service):
            spans = _spans(trace)
            if any(s.name == root and s.tags.get(DESTINATION) == CHANNEL for s in spans) and complete(spans):
                result[:] = spans
                return True
        return False

    await wait_until_async(found, seconds=15, what=f"a complete trace of {root} in Jaeger", every=0.2)
    return result


def _reaching(service: str) -> Callable[[list[Span]], bool]:
    """Whether a trace's spans include one of `service`."""
    return lambda spans: any(s.service == service for s in spans)


def _api_publish(api: ServiceProcess, data: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps({"channel": CHANNEL, "data": data}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{api.env['_HTTP_PORT']}/api/publish",
        data=body,
        headers={"X-API-Key": API_KEY, "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
    return answer


async def test_one_client_operation_is_one_trace_across_gateways_and_services(
    traced_stack: Stack, jaeger: JaegerProcess
) -> None:
    gw1, gw2 = traced_stack.gateways
    alice: Client = sdk_client(ws_url(gw1), "alice")
    bob: Client = sdk_client(ws_url(gw2), "bob")
    try:
        await connected(alice, bob)
        alice_gets = await subscribed(alice, CHANNEL)
        bob_gets = await subscribed(bob, CHANNEL)
        await within(alice.publish(CHANNEL, {"text": "traced"}))
        assert (await bob_gets.next()) == {"text": "traced"}
        assert (await alice_gets.next()) == {"text": "traced"}
        sub = bob.get_subscription(CHANNEL)
        assert sub is not None
        await within(sub.presence())
        await within(sub.history(limit=10))
        assert _api_publish(traced_stack.api, {"text": "from the api"})["result"]["offset"] > 0
        assert (await bob_gets.next()) == {"text": "from the api"}

        # A client publish: its command span on gateway 1, the JetStream store, one
        # delivery per gateway (each counting its one local receiver), two processes.
        def delivered_twice(spans: list[Span]) -> bool:
            return len({s.instance for s in spans if s.name == "meshcast.deliver"}) == 2

        publish = await _trace_with(jaeger, "meshcast-gateway", "meshcast.command.publish", delivered_twice)
        [command] = [s for s in publish if s.name == "meshcast.command.publish"]
        [producer] = [s for s in publish if s.name == "meshcast.publish"]
        deliveries = [s for s in publish if s.name == "meshcast.deliver"]
        assert producer.parent == command.span_id
        assert producer.tags["meshcast.history"] is True
        assert {d.parent for d in deliveries} == {producer.span_id}
        assert {d.tags[DESTINATION] for d in deliveries} == {CHANNEL}
        assert [d.tags["meshcast.local_subscribers"] for d in deliveries] == [1, 1]
        assert {s.service for s in publish} == {"meshcast-gateway"}
        # Two gateways are two processes: the same service, two instances.
        assert len({s.instance for s in publish}) == 2
        assert command.instance in {d.instance for d in deliveries}

        # A subscribe asks the history service for the channel's position (recovery's first step).
        subscribe = await _trace_with(
            jaeger,
            "meshcast-gateway",
            "meshcast.command.subscribe",
            _reaching("meshcast-history"),
        )
        [position] = [s for s in subscribe if s.service == "meshcast-history"]
        assert position.name == "meshcast.history.position"
        assert position.tags[DESTINATION] == CHANNEL

        # History and presence queries: a command span, and the service's own span under it.
        for command_name, service, span_name in [
            ("meshcast.command.history", "meshcast-history", "meshcast.history.history"),
            ("meshcast.command.presence", "meshcast-presence", "meshcast.presence.presence"),
        ]:
            spans = await _trace_with(jaeger, "meshcast-gateway", command_name, _reaching(service))
            [root] = [s for s in spans if s.name == command_name]
            [served] = [s for s in spans if s.service == service]
            assert served.name == span_name
            assert served.parent == root.span_id
            assert served.tags[DESTINATION] == CHANNEL

        # A server API publish: the API's span, both gateways' deliveries under it, and
        # the history service's answer to its first question (the stream's epoch).
        def delivered_with_epoch(spans: list[Span]) -> bool:
            return delivered_twice(spans) and _reaching("meshcast-history")(spans)

        api = await _trace_with(jaeger, "meshcast-api", "meshcast.api.publish", delivered_with_epoch)
        [call] = [s for s in api if s.name == "meshcast.api.publish"]
        assert call.service == "meshcast-api"
        assert {s.parent for s in api if s.name == "meshcast.deliver"} == {call.span_id}
        [epoch] = [s for s in api if s.service == "meshcast-history"]
        assert (epoch.name, epoch.parent) == ("meshcast.history.position", call.span_id)
        assert {"meshcast-api", "meshcast-gateway", "meshcast-history", "meshcast-presence"} <= set(jaeger.services())
    finally:
        await disconnected(alice, bob)
