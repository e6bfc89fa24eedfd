"""Limits at the edge: command floods, connection rates, per-user caps, compression bombs."""

from __future__ import annotations

from typing import Any

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from .harness import GatewayFactory, connected_client, open_client, open_ws, token, url


async def test_command_flood_gets_111_then_disconnect_3013(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(command_rate=1, command_burst=3, command_refusals_before_disconnect=5)
    alice = await connected_client(gateway)  # the connect command spends one token
    await alice.send(*({"id": 10 + i, "ping": {}} for i in range(4)))
    replies: list[dict[str, Any]] = []
    while len(replies) < 4:
        replies.extend(await alice.recv())
    codes = [r.get("error", {}).get("code") for r in replies]
    assert codes[:2] == [None, None]
    assert codes[2:] == [111, 111]
    await alice.send(*({"id": 20 + i, "ping": {}} for i in range(5)))
    assert await alice.close_code() == 3013


async def test_connection_rate_per_ip_is_limited(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(ip_connect_rate=0.01, ip_connect_burst=2)
    await open_ws(gateway)
    await open_ws(gateway)
    with pytest.raises(InvalidStatus) as info:
        await websockets.connect(url(gateway))
    assert info.value.response.status_code == 429


async def test_connections_per_user_are_capped_with_3504(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(max_connections_per_user=2)
    await connected_client(gateway, "alice")
    await connected_client(gateway, "alice")
    third = await open_client(gateway)
    await third.send({"id": 1, "connect": {"token": token("alice")}})
    assert await third.close_code() == 3504
    assert "connect" in await (await open_client(gateway)).command("connect", {"token": token("bob")})


async def test_compressed_message_is_limited_by_its_decompressed_size(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(websocket_compression=True, max_message_size=4096)
    alice = await open_client(gateway, compression="deflate")
    reply = await alice.command("connect", {"token": token("alice")})
    assert "connect" in reply
    # ~1 MB of one repeated byte compresses to about a kilobyte on the wire.
    await alice.send({"id": 2, "publish": {"channel": "chat:a", "data": "x" * 1_000_000}})
    assert await alice.close_code() == 1009
