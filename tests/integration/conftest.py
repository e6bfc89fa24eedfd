"""A gateway in the test's event loop, against a real nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from meshcast.gateway.app import Gateway
from meshcast.gateway.settings import GatewaySettings

from .harness import SECRET, GatewayFactory, close_all

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
        values: dict[str, Any] = {
            "nats_url": nats_url,
            "gateway_host": "127.0.0.1",
            "gateway_port": 0,
            "token_hmac_secret": SECRET,
            "namespaces_file": path,
            "drain_seconds": 0.2,
            **overrides,
        }
        gateway = Gateway(GatewaySettings(**values))
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
