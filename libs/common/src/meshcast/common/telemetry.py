"""OpenTelemetry tracing, exported over OTLP when an endpoint is configured.

Trace context crosses NATS as W3C ``traceparent`` headers (see
`meshcast.bus.envelope.trace_headers` and `extract`).
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

# Spans are no-ops until `setup_tracing` installs a provider.
tracer = trace.get_tracer("meshcast")
TRACEPARENT = "traceparent"


def setup_tracing(service: str, otlp_endpoint: str) -> TracerProvider | None:
    """Install a tracer provider exporting to `otlp_endpoint`; None when empty."""
    if not otlp_endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True)))
    trace.set_tracer_provider(provider)
    return provider


def extract(headers: Mapping[str, str] | None) -> context.Context:
    """The trace context carried in NATS headers (empty context when none)."""
    return propagate.extract(dict(headers) if headers else {})
