"""Every Meshcast service as a subprocess, for the monitoring tests: what their
``/metrics`` export, scraped directly or by a real Prometheus.

`monitored_stack` starts nats-server (a user per service, as deployed), history,
presence, events, auth, the server API, a webhook relay (its endpoint a closed
port: it runs, and retries) and one gateway with lifecycle events on. Each
`ScrapeTarget` names the service as the scrape job of compose's prometheus.yml
(``meshcast-<service>``) and the HTTP port of its ``/metrics``.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from meshcast.common.natsauth import (
    API,
    AUTH,
    EVENTS,
    GATEWAY,
    HISTORY,
    PRESENCE,
    USERS,
    WEBHOOKS,
    generate_password,
    inbox_prefix,
    render_authorization,
)

from .grpckey import AUTH_API_KEY
from .nats import NatsServer
from .processes import (
    ServiceProcess,
    api_process,
    auth_process,
    backend_service,
    events_process,
    gateway_process,
    history_process,
    presence_process,
    running,
)
from .timeouts import timeout

SECRET = "monitoring-secret-0123456789abcdef012345"
API_KEY = "monitoring-api-key-0123456789"
NAMESPACES = (
    "namespaces:\n  - name: chat\n    history_size: 10\n    history_ttl: 300\n    presence: true\n"
    "    join_leave: true\n    recovery: true\n    allow_publish: true\n"
)
# Sample suffixes of each metric type's samples (see the exposition format).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "info": ("_info",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
}


@dataclass(frozen=True)
class ScrapeTarget:
    job: str
    process: ServiceProcess
    port_key: str

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.process.env[self.port_key]}"

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://{self.address}/metrics", timeout=timeout(5)) as resp:
            text: str = resp.read().decode()
        return text


def exported_names(text: str) -> set[str]:
    """Every sample name `text` (an exposition) defines, samples or not: a labelled
    metric no code path has touched yet still has its HELP and TYPE lines."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def _env(user: str) -> dict[str, str]:
    return {"MESHCAST_NATS_INBOX_PREFIX": inbox_prefix(user)}


@contextmanager
def monitored_stack(workdir: Path, secret: str = SECRET) -> Iterator[list[ScrapeTarget]]:
    """The whole stack, running (tokens signed with the HMAC `secret`); stopped (gateway
    first) on leaving."""
    passwords = {user: generate_password() for user in USERS}
    server = NatsServer(workdir / "nats", authorization=render_authorization(passwords)).start()

    def url(user: str) -> list[str]:
        return [server.url_for(user, passwords[user])]

    try:
        namespaces = workdir / "namespaces.yaml"
        namespaces.write_text(NAMESPACES)
        history = history_process(workdir, url(HISTORY), namespaces_file=namespaces, extra_env=_env(HISTORY))
        presence = presence_process(workdir, url(PRESENCE), extra_env=_env(PRESENCE))
        events = events_process(workdir, url(EVENTS), extra_env=_env(EVENTS))
        auth = auth_process(workdir, url(AUTH), secret=secret, api_key=AUTH_API_KEY, extra_env=_env(AUTH))
        api = api_process(workdir, url(API), namespaces_file=namespaces, api_key=API_KEY, extra_env=_env(API))
        webhooks = backend_service(
            "meshcast.webhooks",
            workdir,
            url(WEBHOOKS),
            name="webhooks",
            extra_env={
                **_env(WEBHOOKS),
                "MESHCAST_WEBHOOK_URL": "http://127.0.0.1:9/meshcast",
                "MESHCAST_WEBHOOK_SECRET": SECRET,
                "MESHCAST_WEBHOOK_BACKOFF_INITIAL": "0.5",
                "MESHCAST_WEBHOOK_TIMEOUT": "1",
            },
        )
        gateway = gateway_process(
            workdir,
            url(GATEWAY),
            secret=secret,
            namespaces_file=namespaces,
            extra_env={"MESHCAST_EVENTS_ENABLED": "true", **_env(GATEWAY)},
        )
        procs = (history, presence, events, auth, api, webhooks, gateway)
        with running(*procs):
            yield [
                ScrapeTarget("meshcast-history", history, "_HEALTH_PORT"),
                ScrapeTarget("meshcast-presence", presence, "_HEALTH_PORT"),
                ScrapeTarget("meshcast-events", events, "_HEALTH_PORT"),
                ScrapeTarget("meshcast-auth", auth, "_HEALTH_PORT"),
                ScrapeTarget("meshcast-api", api, "_HEALTH_PORT"),
                ScrapeTarget("meshcast-webhooks", webhooks, "_HEALTH_PORT"),
                ScrapeTarget("meshcast-gateway", gateway, "_PORT"),
            ]
    finally:
        server.stop()
