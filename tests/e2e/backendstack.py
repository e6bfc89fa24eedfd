"""A whole stack for backends written with meshcast.backend: NATS with a user per
service (as deployed), history, presence, events and a gateway with lifecycle
events on, started once per test module."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from meshcast.common.natsauth import (
    BACKEND,
    EVENTS,
    GATEWAY,
    HISTORY,
    PRESENCE,
    USERS,
    generate_password,
    inbox_prefix,
    render_authorization,
)
from meshcast.testing import (
    NatsServer,
    ServiceProcess,
    events_process,
    gateway_process,
    history_process,
    presence_process,
    running,
    ws_url,
)

from .conftest import SECRET


@dataclass
class BackendStack:
    nats: NatsServer
    passwords: dict[str, str]
    gateway: ServiceProcess
    workdir: Path

    def url(self, user: str = BACKEND) -> str:
        return self.nats.url_for(user, self.passwords[user])

    @property
    def ws(self) -> str:
        return ws_url(self.gateway)

    def violations(self) -> list[str]:
        """Permission violations nats-server logged (the services must cause none)."""
        return [line for line in self.nats.log_since().splitlines() if "permissions violation" in line.lower()]


def _env(user: str) -> dict[str, str]:
    return {"MESHCAST_NATS_INBOX_PREFIX": inbox_prefix(user)}


@contextmanager
def backend_stack(workdir: Path, namespaces: str, gateway_env: dict[str, str] | None = None) -> Iterator[BackendStack]:
    passwords = {user: generate_password() for user in USERS}
    server = NatsServer(workdir / "nats", authorization=render_authorization(passwords)).start()
    try:
        ns_file = workdir / "namespaces.yaml"
        ns_file.write_text(namespaces)

        def url(user: str) -> list[str]:
            return [server.url_for(user, passwords[user])]

        history = history_process(workdir, url(HISTORY), namespaces_file=ns_file, extra_env=_env(HISTORY))
        presence = presence_process(workdir, url(PRESENCE), extra_env=_env(PRESENCE))
        events = events_process(workdir, url(EVENTS), extra_env=_env(EVENTS))
        gateway = gateway_process(
            workdir,
            url(GATEWAY),
            secret=SECRET,
            namespaces_file=ns_file,
            extra_env={"MESHCAST_EVENTS_ENABLED": "true", **_env(GATEWAY), **(gateway_env or {})},
        )
        with running(history, presence, events, gateway):
            yield BackendStack(server, passwords, gateway, workdir)
    finally:
        server.stop()
