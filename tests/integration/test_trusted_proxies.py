"""Per-IP limits and the client's address behind a trusted proxy, with real WebSocket clients.

Loopback addresses stand in for the network: 127.0.0.1 is the ingress (trusted when the
test says so), 127.0.0.2 a client that reaches the gateway directly and forges headers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from meshcast.gateway.app import Gateway
from meshcast.testing import within

from .harness import GatewayFactory, JsonClient, open_ws, token, url

INGRESS = "127.0.0.1"
DIRECT = "127.0.0.2"


async def _connect(gateway: Gateway, source: str, forwarded: str | None = None) -> JsonClient:
    headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
    client = JsonClient(await open_ws(gateway, additional_headers=headers, local_addr=(source, 0)))
    reply = await client.command("connect", {"token": token("alice")})
    assert "connect" in reply, reply
    return client


async def _refused(gateway: Gateway, source: str, forwarded: str | None = None) -> int:
    headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
    with pytest.raises(InvalidStatus) as info:
        await websockets.connect(url(gateway), additional_headers=headers, local_addr=(source, 0))
    return info.value.response.status_code


def _remote_addrs(gateway: Gateway) -> list[str]:
    ctx = gateway._ctx
    assert ctx is not None
    return sorted(c.remote_addr for c in ctx.hub.clients.values())


def _limited(**overrides: Any) -> dict[str, Any]:
    return {"ip_connect_rate": 0.01, "ip_connect_burst": 2, **overrides}


async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_limit(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(**_limited(trusted_proxies=[f"{INGRESS}/32"]))
    await _connect(gateway, INGRESS, "203.0.113.1")
    await _connect(gateway, INGRESS, "203.0.113.1")
    assert await _refused(gateway, INGRESS, "203.0.113.1") == 429
    # The ingress's other clients are not held back by this one.
    await _connect(gateway, INGRESS, "203.0.113.2")
    await _connect(gateway, INGRESS, "6.6.6.6, 203.0.113.3")
    assert _remote_addrs(gateway) == ["203.0.113.1", "203.0.113.1", "203.0.113.2", "203.0.113.3"]


async def test_forged_headers_from_an_untrusted_peer_are_ignored(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(**_limited(trusted_proxies=[f"{INGRESS}/32"]))
    # A client reaching the gateway directly cannot pass for several, nor for someone else.
    await _connect(gateway, DIRECT, "203.0.113.1")
    await _connect(gateway, DIRECT, "203.0.113.2")
    assert await _refused(gateway, DIRECT, "203.0.113.3") == 429
    assert _remote_addrs(gateway) == [DIRECT, DIRECT]
    # Nor can it spend the budget of the address it names.
    await _connect(gateway, INGRESS, "127.0.0.2, 203.0.113.1")


async def test_without_trusted_proxies_the_header_is_never_read(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(**_limited())
    await _connect(gateway, INGRESS, "203.0.113.1")
    await _connect(gateway, INGRESS, "203.0.113.2")
    assert await _refused(gateway, INGRESS, "203.0.113.3") == 429
    assert _remote_addrs(gateway) == [INGRESS, INGRESS]


async def test_a_trusted_proxy_is_not_held_to_the_handshakes_per_ip_cap(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(max_handshakes_per_ip=2, handshake_timeout=30, trusted_proxies=[f"{INGRESS}/32"])
    # Upgrades in progress through the ingress (its many clients'): more than the cap.
    held = [await asyncio.open_connection(INGRESS, gateway.port) for _ in range(5)]
    await _connect(gateway, INGRESS, "203.0.113.1")
    # An untrusted address is still capped: its extra half-open upgrades are dropped at once.
    direct = [await asyncio.open_connection(INGRESS, gateway.port, local_addr=(DIRECT, 0)) for _ in range(3)]
    assert await within(direct[-1][0].read(), 5) == b""
    for _, writer in held + direct:
        writer.close()
