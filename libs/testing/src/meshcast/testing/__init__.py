"""Test harness: real nats-server processes and Meshcast services as subprocesses."""

from __future__ import annotations

from .grpckey import AUTH_API_KEY, keyed_channel
from .nats import NatsCluster, NatsServer, free_port
from .processes import (
    ServiceProcess,
    api_process,
    auth_process,
    events_process,
    gateway_process,
    history_process,
    metric_sum,
    presence_process,
    running,
    ws_url,
)
from .timeouts import timeout, token_ttl, wait_until, wait_until_async, within

__all__ = [
    "AUTH_API_KEY",
    "NatsCluster",
    "NatsServer",
    "ServiceProcess",
    "api_process",
    "auth_process",
    "events_process",
    "free_port",
    "gateway_process",
    "history_process",
    "keyed_channel",
    "metric_sum",
    "presence_process",
    "running",
    "timeout",
    "token_ttl",
    "wait_until",
    "wait_until_async",
    "within",
    "ws_url",
]
