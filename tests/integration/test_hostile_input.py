"""Input an attacker chooses: each answered with a protocol code, none takes the gateway down.

Every case here was a hole once: an rpc method that escaped into a subject
past nats-server's control-line limit (nats-py then closes the connection
for good and the gateway lingers, deaf), JSON nested too deep, a string
``exp`` read as "no expiry", a flood at twice the command rate that never
reached 3013, and half-open upgrades held for the whole handshake timeout.
"""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest
import websockets

from meshcast.gateway.app import Gateway
from meshcast.testing import timeout, within

from .harness import SECRET, GatewayFactory, connected_client, open_client, open_ws, token


@pytest.mark.parametrize(
    "method", ["m" * 5000, "." * 1400, "\u2603" * 300, "a\x00b"], ids=["long", "dots", "wide", "nul"]
)
async def test_rpc_method_that_cannot_be_a_subject_is_107_and_nats_stays_up(gateway: Gateway, method: str) -> None:
    alice = await connected_client(gateway, "alice")
    bob = await connected_client(gateway, "bob")
    assert await bob.command("subscribe", {"channel": "chat:after"}) == {"id": 2, "subscribe": {}}
    reply = await alice.command("rpc", {"method": method, "data": {}})
    assert reply["error"]["code"] == 107, reply
    # The gateway's NATS connection is intact: a publication still goes round.
    assert await alice.command("publish", {"channel": "chat:after", "data": {"n": 1}}) == {"id": 3, "publish": {}}
    assert (await bob.next_push())["push"]["pub"]["data"] == {"n": 1}
    assert gateway.ready()


async def test_channel_that_escapes_past_the_token_limit_is_107(make_gateway: GatewayFactory) -> None:
    namespaces = "max_channel_length: 4096\nnamespaces:\n  - name: chat\n    allow_publish: true\n"
    gateway = await make_gateway(namespaces, max_channel_length=4096)
    alice = await connected_client(gateway)
    reply = await alice.command("subscribe", {"channel": "chat:" + "." * 1000})
    assert reply["error"]["code"] == 107, reply
    assert "subscribe" in await alice.command("subscribe", {"channel": "chat:" + "." * 500})
    assert gateway.ready()


@pytest.mark.parametrize("where", ["command", "data"])
async def test_json_nested_too_deep_closes_with_3501(gateway: Gateway, where: str) -> None:
    deep = "[" * 20_000 + "]" * 20_000
    alice = await open_client(gateway)
    if where == "command":
        await alice.ws.send(deep)
    else:
        await alice.ws.send(f'{{"id":1,"connect":{{"token":"{token("alice")}","data":{deep}}}}}')
    assert await alice.close_code() == 3501
    assert "connect" in await (await open_client(gateway)).command("connect", {"token": token("bob")})


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
async def test_token_times_that_are_not_numbers_close_with_3500(gateway: Gateway, claim: str) -> None:
    claims = {"sub": "mallory", "exp": int(time.time()) + 3600, claim: str(int(time.time()) + 10**9)}
    if claim != "exp":
        claims[claim] = str(int(time.time()) - 10)
    forged = jwt.encode(claims, SECRET, algorithm="HS256")
    mallory = await open_client(gateway)
    await mallory.send({"id": 1, "connect": {"token": forged}})
    assert await mallory.close_code() == 3500


async def test_flood_at_twice_the_rate_is_disconnected_with_3013(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(
        command_rate=50, command_burst=5, command_refusals_before_disconnect=20, command_refusal_window=10
    )
    # Unbounded incoming queue: the 111 replies go unread, and the close frame must get through.
    alice = await open_client(gateway, max_queue=None)
    assert "connect" in await alice.command("connect", {"token": token("alice")})
    # 100 commands a second against a rate of 50: every other one admitted. Paced by
    # the clock, not by sleeps, so a busy machine sends late ones in a catch-up burst
    # rather than at a lower rate.
    loop = asyncio.get_running_loop()
    started, sent = loop.time(), 0
    while sent < 400:
        due = min(400, int((loop.time() - started) * 100) + 1)
        try:
            for i in range(sent, due):
                await alice.send({"id": 100 + i, "ping": {}})
        except websockets.ConnectionClosed:
            break
        sent = due
        await asyncio.sleep(0.01)
    assert await alice.close_code(10) == 3013


async def test_half_open_upgrades_per_ip_are_capped(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(max_handshakes_per_ip=10, handshake_timeout=30)
    held = [await asyncio.open_connection("127.0.0.1", gateway.port) for _ in range(10)]
    extra = [await asyncio.open_connection("127.0.0.1", gateway.port) for _ in range(20)]
    # The extra ones are dropped at once, not after the 30 s handshake timeout.
    for reader, _ in extra:
        assert await within(reader.read(), 5) == b""
    # Another address is not affected by this one's slowloris.
    other = await asyncio.open_connection("127.0.0.1", gateway.port, local_addr=("127.0.0.2", 0))
    other[1].write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await within(other[0].readline())).startswith(b"HTTP/1.1 200")
    # Upgrades that finish stop counting: free the slots, and a real client gets in.
    for _, writer in held + extra + [other]:
        writer.close()

    # The server notices the closes a moment later; then 15 finished upgrades, more than the cap.
    deadline = asyncio.get_running_loop().time() + timeout(5)
    opened = 0
    while opened < 15:
        try:
            await open_ws(gateway)
            opened += 1
        except (OSError, websockets.InvalidHandshake):
            assert asyncio.get_running_loop().time() < deadline, "slots of closed upgrades never freed"
            await asyncio.sleep(0.05)
