"""A gateway in the test's event loop, against a real nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from meshcast.auth.app import AuthApp
from meshcast.gateway.app import Gateway
from meshcast.history.app import HistoryApp
from meshcast.presence.app import PresenceApp
from meshcast.testing import within

from .harness import (
    SECRET,
    AuthFactory,
    GatewayFactory,
    HistoryFactory,
    PresenceFactory,
    auth_settings,
    close_all,
    gateway_settings,
    history_settings,
    presence_settings,
    stop_all,
)

NAMESPACES = """
namespaces:
  - name: chat
    allow_publish: true
  - name: news
    allow_publish: false
  - name: public
    allow_publish: true
    allow_subscribe_anonymous: true
default:
  allow_publish: true
"""


# The factories below start services in the test's process on `nats_url` (a
# module may override that fixture, e.g. with a cluster's URLs); each service is
# registered before it starts, and at teardown those the test did not stop itself
# are stopped.


@pytest.fixture
async def make_gateway(nats_url: str, tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    started: list[Gateway] = []

    async def factory(namespaces: str = NAMESPACES, **overrides: Any) -> Gateway:
        path = tmp_path / f"ns-{len(started)}.yaml"
        path.write_text(namespaces)
        gateway = Gateway(gateway_settings(nats_url, path, **overrides))
        started.append(gateway)
        await gateway.start()
        return gateway

    yield factory
    await close_all()
    await stop_all(started)


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> Gateway:
    return await make_gateway()


@pytest.fixture
async def make_history(nats_url: str, tmp_path: Path) -> AsyncIterator[HistoryFactory]:
    """History services for a namespaces text; `start=False` leaves the starting to the test."""
    started: list[HistoryApp] = []

    async def factory(namespaces: str, *, start: bool = True, **overrides: Any) -> HistoryApp:
        path = tmp_path / f"history-ns-{len(started)}.yaml"
        path.write_text(namespaces)
        history = HistoryApp(history_settings(nats_url, path, **overrides))
        started.append(history)
        if start:
            await within(history.start(), 20)
        return history

    yield factory
    await stop_all(started)


@pytest.fixture
async def make_presence(nats_url: str) -> AsyncIterator[PresenceFactory]:
    """Start presence services (this process) on `nats_url`."""
    started: list[PresenceApp] = []

    async def factory(**overrides: Any) -> PresenceApp:
        presence = PresenceApp(presence_settings(nats_url, **overrides))
        started.append(presence)
        await within(presence.start(), 20)
        return presence

    yield factory
    await stop_all(started)


@pytest.fixture
async def make_auth(nats_url: str) -> AsyncIterator[AuthFactory]:
    """Auth services signing with the test secret (unless `overrides` say otherwise)."""
    started: list[AuthApp] = []

    async def factory(**overrides: Any) -> AuthApp:
        auth = AuthApp(auth_settings(nats_url, **{"token_hmac_secret": SECRET, **overrides}))
        started.append(auth)
        await within(auth.start(), 20)
        return auth

    yield factory
    await stop_all(started)
