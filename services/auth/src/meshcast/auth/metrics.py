"""The auth service's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter("meshcast_auth_requests_total", "gRPC calls by method and status code.", ["method", "code"])
LATENCY = Histogram("meshcast_auth_request_seconds", "gRPC call latency.", ["method"])
ISSUED = Counter("meshcast_auth_tokens_issued_total", "Tokens issued.", ["kind"])
