"""OpenTelemetry tracing, exported over OTLP when an endpoint is configured.

Trace context crosses NATS as W3C ``traceparent`` headers (see
`meshcast.bus.envelope.trace_headers` and `extract`), so one client operation
is one trace across every process it touches.

Configuration is OpenTelemetry's standard environment, read once at start
(`tracing_config`):

- the endpoint: ``MESHCAST_OTLP_ENDPOINT`` (the service setting), else
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, else ``OTEL_EXPORTER_OTLP_ENDPOINT``;
  OTLP over gRPC. None set (or ``OTEL_SDK_DISABLED=true``): tracing is off, no
  provider is installed and `tracing_enabled` is False, so call sites that
  guard on it do no trace work at all;
- the resource: ``service.name`` from ``OTEL_SERVICE_NAME``, else
  ``OTEL_RESOURCE_ATTRIBUTES``, else the service's own name;
  ``service.instance.id`` from ``OTEL_RESOURCE_ATTRIBUTES``, else the
  ``MESHCAST_NODE_NAME``, else ``<host>-<pid>``: two gateways are two processes;
- the sampler: ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG`` (default
  ``parentbased_always_on``; ``parentbased_traceidratio`` with a ratio samples
  that share of new traces and follows the caller's decision otherwise).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote, urlsplit

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

from .settings import ConfigError

# Spans are no-ops until `setup_tracing` installs a provider.
tracer = trace.get_tracer("meshcast")
TRACEPARENT = "traceparent"
# OpenTelemetry's messaging conventions: the channel of a span.
DESTINATION: Final = "messaging.destination.name"
MESSAGING_SYSTEM: Final = "messaging.system"

DEFAULT_SAMPLER: Final = "parentbased_always_on"
SAMPLERS: Final = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
# How long a stopping service waits for its last spans to leave.
FLUSH_MILLIS: Final = 2000

_enabled = False


def tracing_enabled() -> bool:
    """Whether this process exports traces: guard any trace work a hot path would do."""
    return _enabled


@dataclass(frozen=True)
class TracingConfig:
    endpoint: str
    sampler: Sampler
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def insecure(self) -> bool:
        return urlsplit(self.endpoint).scheme != "https"


def tracing_config(
    service: str,
    otlp_endpoint: str = "",
    *,
    instance: str = "",
    environ: Mapping[str, str] | None = None,
) -> TracingConfig | None:
    """What `setup_tracing` installs for `service`, from the standard environment;
    None when tracing is off. ConfigError for a sampler it does not know."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    endpoint = (
        otlp_endpoint or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or ""
    ).strip()
    if not endpoint:
        return None
    return TracingConfig(endpoint, sampler_from(env), resource_attributes(service, instance=instance, environ=env))


def sampler_from(environ: Mapping[str, str]) -> Sampler:
    """The sampler ``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG`` name."""
    name = (environ.get("OTEL_TRACES_SAMPLER") or DEFAULT_SAMPLER).strip().lower()
    if name not in SAMPLERS:
        raise ConfigError(f"OTEL_TRACES_SAMPLER: {name!r} is not one of {', '.join(SAMPLERS)}")
    if name.endswith("always_on"):
        root: Sampler = ALWAYS_ON
    elif name.endswith("always_off"):
        root = ALWAYS_OFF
    else:
        root = TraceIdRatioBased(_ratio(environ.get("OTEL_TRACES_SAMPLER_ARG", "")))
    return ParentBased(root) if name.startswith("parentbased_") else root


def _ratio(arg: str) -> float:
    if not arg.strip():
        return 1.0
    try:
        ratio = float(arg)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"OTEL_TRACES_SAMPLER_ARG: {arg!r} is not a ratio between 0 and 1")
    return ratio


def resource_attributes(service: str, *, instance: str = "", environ: Mapping[str, str]) -> dict[str, str]:
    """The process's resource: its service and its instance (see the module docstring)."""
    attributes = _parse_resource_attributes(environ.get("OTEL_RESOURCE_ATTRIBUTES", ""))
    attributes["service.name"] = (
        environ.get("OTEL_SERVICE_NAME", "").strip() or attributes.get("service.name") or service
    )
    attributes.setdefault("service.instance.id", instance or f"{socket.gethostname()}-{os.getpid()}")
    attributes.setdefault("host.name", socket.gethostname())
    attributes.setdefault("process.pid", str(os.getpid()))
    return attributes


def _parse_resource_attributes(text: str) -> dict[str, str]:
    """``key=value,key=value`` as the specification writes it (values percent-decoded)."""
    attributes: dict[str, str] = {}
    for pair in text.split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            attributes[key.strip()] = unquote(value.strip())
    return attributes


def setup_tracing(service: str, otlp_endpoint: str = "", *, instance: str = "") -> TracerProvider | None:
    """Install a tracer provider exporting over OTLP as `tracing_config` describes; None when off."""
    config = tracing_config(service, otlp_endpoint, instance=instance)
    if config is None:
        return None
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create(dict(config.attributes)), sampler=config.sampler)
    exporter = OTLPSpanExporter(endpoint=config.endpoint, insecure=config.insecure)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    install(provider)
    return provider


def install(provider: TracerProvider) -> None:
    """Make `provider` the process's and turn the guarded trace work on (tests: an in-memory exporter)."""
    global _enabled
    if trace.get_tracer_provider() is not provider:
        trace.set_tracer_provider(provider)
    _enabled = True


def uninstall() -> None:
    """Turn the guarded trace work off again (tests; OpenTelemetry keeps the provider: one a process)."""
    global _enabled
    _enabled = False


def sampled(traceparent: str) -> bool:
    """Whether a W3C ``traceparent`` says its caller sampled the trace (flag 01)."""
    try:
        return bool(int(traceparent[-2:], 16) & 1)
    except ValueError:
        return False


def flush_tracing(provider: TracerProvider | None) -> None:
    """Send the spans still buffered (bounded: a collector away never holds a stop up)."""
    if provider is not None:
        provider.force_flush(FLUSH_MILLIS)


def extract(headers: Mapping[str, str] | None) -> context.Context:
    """The trace context carried in NATS headers (empty context when none)."""
    return propagate.extract(dict(headers) if headers else {})
