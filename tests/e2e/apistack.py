"""The server API stack of the e2e tests: NATS with a user per service, history,
presence, two gateways and the API (key `KEY`, bodies up to `MAX_BODY`) as
subprocesses, once per test module (`api_stack`), or as a test needs it
(`running_api_stack`)."""

from __future__ import annotations

import contextlib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshcast.common.natsauth import API, GATEWAY, HISTORY, PRESENCE, USERS, generate_password, inbox_prefix
from meshcast.common.natsauth import render_authorization as users_block
from meshcast.testing import (
    NatsServer,
    ServiceProcess,
    api_process,
    gateway_process,
    history_process,
    presence_process,
    timeout,
)

from .conftest import NAMESPACES, SECRET

KEY = "e2e-api-key-0123456789"
MAX_BODY = 65536
# The longest `channels`/`info` may wait; with every gateway known they end much sooner
# (known: heard from within GATEWAY_TIMEOUT, after the API has listened that long).
SCATTER_WAIT = 2.0
GATEWAY_TIMEOUT = 2.0


@dataclass
class ApiStack:
    gateways: tuple[ServiceProcess, ...]
    api: ServiceProcess

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.api.env['_HTTP_PORT']}/api"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.api.env['_GRPC_PORT']}"


@pytest.fixture(scope="module")
def api_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiStack]:
    with running_api_stack(tmp_path_factory.mktemp("api")) as stack:
        yield stack


@contextlib.contextmanager
def running_api_stack(workdir: Path, *, gateways: int = 2, api_env: dict[str, str] | None = None) -> Iterator[ApiStack]:
    """The stack in `workdir`, with `gateways` gateways and `api_env` added to the API's environment."""
    passwords = {user: generate_password() for user in USERS}
    nats = NatsServer(workdir / "nats", authorization=users_block(passwords)).start()

    def as_user(user: str) -> tuple[list[str], dict[str, str]]:
        return [nats.url_for(user, passwords[user])], {"MESHCAST_NATS_INBOX_PREFIX": inbox_prefix(user)}

    urls, env = as_user(HISTORY)
    procs = [history_process(workdir, urls, namespaces_file=NAMESPACES, extra_env=env)]
    urls, env = as_user(PRESENCE)
    procs.append(presence_process(workdir, urls, extra_env=env))
    urls, env = as_user(GATEWAY)
    gateway_procs = tuple(
        gateway_process(
            workdir,
            urls,
            secret=SECRET,
            namespaces_file=NAMESPACES,
            name=f"gateway-{i}",
            extra_env={**env, "MESHCAST_PRESENCE_HEARTBEAT_INTERVAL": "0.5"},
        )
        for i in range(1, gateways + 1)
    )
    urls, env = as_user(API)
    api = api_process(
        workdir,
        urls,
        namespaces_file=NAMESPACES,
        api_key=KEY,
        extra_env={
            **env,
            "MESHCAST_API_MAX_BODY_BYTES": str(MAX_BODY),
            "MESHCAST_SCATTER_WAIT": str(SCATTER_WAIT),
            "MESHCAST_GATEWAY_TIMEOUT": str(GATEWAY_TIMEOUT),
            **(api_env or {}),
        },
    )
    started: list[ServiceProcess] = []
    try:
        for proc in (*procs, *gateway_procs, api):
            started.append(proc.start(wait=30))
        yield ApiStack(gateway_procs, api)
    finally:
        for proc in reversed(started):
            proc.terminate()
        nats.stop()


def raw_call(
    stack: ApiStack, method: str, body: bytes, headers: dict[str, str], verb: str = "POST"
) -> tuple[int, bytes]:
    url = f"{stack.base}/{method}" if method else stack.base  # '': the legacy `POST /api`
    request = urllib.request.Request(url, data=body, headers=headers, method=verb)
    try:
        with urllib.request.urlopen(request, timeout=timeout(10)) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
