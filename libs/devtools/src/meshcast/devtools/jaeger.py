"""Jaeger in `make run TRACING=1`: its configuration and the environment that points
every service at it.

The binary is Jaeger v2's all-in-one (collector, in-memory store, query API and UI
in one process), built once into the tools cache by ``python -m
meshcast.testing.jaeger`` (the Makefile asks for it and passes its path); the tests
run the same binary with the same configuration on free ports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

QUERY_PORT: Final = 16686
OTLP_PORT: Final = 4317

# Jaeger v2's configuration (an OpenTelemetry collector's): the all-in-one's own
# pieces without the receivers and extensions Meshcast does not use, so that it
# opens only the four ports named here.
_CONFIG: Final = """\
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: {max_traces}
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: {host}:{query}
    grpc:
      endpoint: {host}:{query_grpc}
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: {host}:{otlp_grpc}
      http:
        endpoint: {host}:{otlp_http}
processors:
  batch:
    timeout: {batch_timeout}
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"""


@dataclass(frozen=True, slots=True)
class JaegerPorts:
    """OTLP over gRPC and HTTP in, the query API and UI (HTTP and gRPC) out."""

    otlp_grpc: int = OTLP_PORT
    otlp_http: int = OTLP_PORT + 1
    query: int = QUERY_PORT
    query_grpc: int = QUERY_PORT - 1


def render_config(host: str, ports: JaegerPorts, *, max_traces: int = 100_000, batch_timeout: str = "200ms") -> str:
    """Jaeger's YAML configuration listening on `host` at `ports`."""
    return _CONFIG.format(
        host=host,
        otlp_grpc=ports.otlp_grpc,
        otlp_http=ports.otlp_http,
        query=ports.query,
        query_grpc=ports.query_grpc,
        max_traces=max_traces,
        batch_timeout=batch_timeout,
    )


def tracing_env(host: str, ports: JaegerPorts) -> dict[str, str]:
    """What every service gets to export to that Jaeger (OpenTelemetry's standard variable)."""
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{host}:{ports.otlp_grpc}"}
