"""A gateway in the test's event loop, against a real nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from meshcast.gateway.app import Gateway
from meshcast.history.app import HistoryApp
from meshcast.presence.app import PresenceApp
from meshcast.testing import within

from .harness import (
    GatewayFactory,
    HistoryFactory,
    PresenceFactory,
    close_all,
    gateway_settings,
    history_settings,
    presence_settings,
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


@pytest.fixture
async def make_gateway(nats_url: str, tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    started: list[Gateway] = []

    async def factory(namespaces: str = NAMESPACES, **overrides: Any) -> Gateway:
        path = tmp_path / f"ns-{len(started)}.yaml"
        path.write_text(namespaces)
        gateway = Gateway(gateway_settings(nats_url, path, **overrides))
        await gateway.start()
        started.append(gateway)
        return gateway

    yield factory
    await close_all()
    for gateway in started:
        await gateway.stop()


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> Gateway:
    return await make_gateway()


@pytest.fixture
async def make_history(nats_url: str, tmp_path: Path) -> AsyncIterator[HistoryFactory]:
    """Start history services (this process) on `nats_url` for a namespaces text."""
    started: list[HistoryApp] = []

    async def factory(namespaces: str, **overrides: Any) -> HistoryApp:
        path = tmp_path / f"history-ns-{len(started)}.yaml"
        path.write_text(namespaces)
        history = HistoryApp(history_settings(nats_url, path, **overrides))
        await within(history.start(), 20)
        started.append(history)
        return history

    yield factory
    for history in started:
        await history.stop()


@pytest.fixture
async def make_presence(nats_url: str) -> AsyncIterator[PresenceFactory]:
    """Start presence services (this process) on `nats_url`."""
    started: list[PresenceApp] = []

    async def factory(**overrides: Any) -> PresenceApp:
        presence = PresenceApp(presence_settings(nats_url, **overrides))
        await within(presence.start(), 20)
        started.append(presence)
        return presence

    yield factory
    for presence in started:
        await presence.stop()
