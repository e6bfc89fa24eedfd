"""The auth service end to end: tokens it issues connect, its revocations close connections on every gateway."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from centrifuge import Client

from meshcast.proto.auth_pb2 import (
    DisconnectUserRequest,
    IssueConnectionTokenRequest,
    IssueSubscriptionTokenRequest,
    RevokeTokenRequest,
    RevokeUserRequest,
)
from meshcast.proto.auth_pb2_grpc import AuthServiceStub
from meshcast.testing import (
    NatsCluster,
    ServiceProcess,
    auth_process,
    keyed_channel,
    running,
    wait_until,
    wait_until_async,
    within,
    ws_url,
)
from meshcast.testing.raw import RawClient

from .conftest import SECRET
from .sdk import ConnectionEvents

pytestmark = pytest.mark.e2e


@pytest.fixture
def auth(nats_cluster: NatsCluster, tmp_path: Path) -> Iterator[ServiceProcess]:
    proc = auth_process(tmp_path, nats_cluster.urls, secret=SECRET, extra_env={"MESHCAST_REVOCATION_REPLICAS": "3"})
    with running(proc):
        yield proc


@pytest.fixture
async def stub(auth: ServiceProcess) -> AsyncIterator[AuthServiceStub]:
    async with keyed_channel(f"127.0.0.1:{auth.env['_GRPC_PORT']}") as channel:
        yield AuthServiceStub(channel)


async def issue(stub: AuthServiceStub, user: str) -> tuple[str, str]:
    reply = await stub.IssueConnectionToken(
        IssueConnectionTokenRequest(user=user, ttl_seconds=600, info_json=json.dumps({"n": user}).encode())
    )
    return reply.token, reply.jti


async def connected(url: str, token: str) -> tuple[Client, ConnectionEvents]:
    events = ConnectionEvents()
    client = Client(url, token=token, events=events, max_reconnect_delay=0.5)
    await within(client.connect())
    return client, events


async def events_code(events: ConnectionEvents, code: int) -> None:
    """The connection was closed with `code`, in a generous bound (speed is the benchmarks' question)."""
    await events.wait_for_code(code, 10)


async def refused_as_revoked(url: str, token: str) -> None:
    """Connect with `token` until the gateway refuses it as revoked (3500): a
    gateway's watch of the revocation bucket may be a moment behind the auth service."""
    while True:
        events = ConnectionEvents()
        again = Client(url, token=token, events=events)
        with contextlib.suppress(Exception):  # the SDK may raise from connect() when refused
            await within(again.connect())
        try:
            await events.wait_for_code(3500, 1)
            return
        except TimeoutError:
            continue
        finally:
            await again.disconnect()


async def test_disconnect_user_closes_every_connection_on_every_gateway(
    two_gateways: tuple[ServiceProcess, ServiceProcess], stub: AuthServiceStub
) -> None:
    gw1, gw2 = two_gateways
    token, _ = await issue(stub, "mallory")
    clients = [await connected(ws_url(gw), token) for gw in (gw1, gw2, gw1)]
    bystander, bystander_events = await connected(ws_url(gw2), (await issue(stub, "alice"))[0])
    await stub.DisconnectUser(DisconnectUserRequest(user="mallory"))
    # How fast is a benchmark's question; here: every one of them, in a generous bound.
    await asyncio.gather(*(events.wait_for_code(3503, 10) for _, events in clients))
    assert 3503 not in bystander_events.codes
    for client, _ in clients:
        await client.disconnect()
    await bystander.disconnect()


async def test_revoked_token_closes_its_connections_and_cannot_connect_again(
    two_gateways: tuple[ServiceProcess, ServiceProcess], stub: AuthServiceStub
) -> None:
    gw1, gw2 = two_gateways
    # The gateways watch the revocation bucket from when the auth service has made it.
    await asyncio.to_thread(
        wait_until, lambda: all("watching revocations" in gw.logs() for gw in (gw1, gw2)), 10, "revocation watch"
    )
    token, jti = await issue(stub, "bob")
    other_token, _ = await issue(stub, "bob")
    first, first_events = await connected(ws_url(gw1), token)
    second, second_events = await connected(ws_url(gw2), other_token)
    await stub.RevokeToken(RevokeTokenRequest(jti=jti))
    await events_code(first_events, 3500)
    assert 3500 not in second_events.codes  # another token of the same user lives on
    # Both gateways learn the revocation (the control message, the bucket's watch):
    # the token cannot connect again anywhere.
    for gw in (gw1, gw2):
        await within(refused_as_revoked(ws_url(gw), token), 10)
    await first.disconnect()
    await second.disconnect()


async def test_revoked_user_is_disconnected_everywhere(
    two_gateways: tuple[ServiceProcess, ServiceProcess], stub: AuthServiceStub
) -> None:
    gw1, gw2 = two_gateways
    token, _ = await issue(stub, "eve")
    sessions = [await connected(ws_url(gw), token) for gw in (gw1, gw2)]
    await stub.RevokeUser(RevokeUserRequest(user="eve"))
    await asyncio.gather(*(events_code(events, 3500) for _, events in sessions))
    for client, _ in sessions:
        await client.disconnect()


async def sub_token(stub: AuthServiceStub, user: str, channel: str) -> tuple[str, str]:
    reply = await stub.IssueSubscriptionToken(
        IssueSubscriptionTokenRequest(user=user, channel=channel, ttl_seconds=600)
    )
    return reply.token, reply.jti


async def raw_connected(url: str, token: str) -> RawClient:
    client = await RawClient.open(url)
    reply = await client.command("connect", {"token": token})
    assert "connect" in reply, reply
    return client


async def closed_code(client: RawClient) -> int | None:
    await within(client.ws.wait_closed())
    return client.ws.close_code


async def test_token_kinds_cannot_stand_in_for_each_other(
    two_gateways: tuple[ServiceProcess, ServiceProcess], stub: AuthServiceStub
) -> None:
    gw1, _ = two_gateways
    subscription, _ = await sub_token(stub, "carol", "$chat:vault")
    as_connection = await RawClient.open(ws_url(gw1))
    with contextlib.suppress(ConnectionError):
        await as_connection.command("connect", {"token": subscription})
    assert await closed_code(as_connection) == 3500

    connection, _ = await issue(stub, "carol")
    carol = await raw_connected(ws_url(gw1), connection)
    with contextlib.suppress(ConnectionError):
        await carol.command("subscribe", {"channel": "$chat:vault", "token": connection})
    assert await closed_code(carol) == 3500


async def test_revoked_subscription_token_ends_its_subscription_and_cannot_subscribe_again(
    two_gateways: tuple[ServiceProcess, ServiceProcess], stub: AuthServiceStub
) -> None:
    gw1, gw2 = two_gateways
    await asyncio.to_thread(
        wait_until, lambda: all("watching revocations" in gw.logs() for gw in (gw1, gw2)), 10, "revocation watch"
    )
    token, jti = await sub_token(stub, "dave", "$chat:vault")
    other, _ = await sub_token(stub, "dave", "$chat:annex")
    dave = await raw_connected(ws_url(gw1), (await issue(stub, "dave"))[0])
    await dave.subscribe("$chat:vault", token=token)
    await dave.subscribe("$chat:annex", token=other)
    await stub.RevokeToken(RevokeTokenRequest(jti=jti))
    await wait_until_async(lambda: bool(dave.channels["$chat:vault"].unsubscribed), 2, "the unsubscribe push")
    assert dave.channels["$chat:vault"].unsubscribed[0]["code"] == 2000
    assert dave.channels["$chat:annex"].unsubscribed == []  # another token's subscription lives on
    # Every gateway refuses the revoked token from now on.
    for gw in (gw1, gw2):
        again = await raw_connected(ws_url(gw), (await issue(stub, "dave"))[0])
        with contextlib.suppress(ConnectionError):
            await again.command("subscribe", {"channel": "$chat:vault", "token": token})
        assert await closed_code(again) == 3500
    await dave.close()


async def test_revoked_user_cannot_use_subscription_tokens_issued_before(
    two_gateways: tuple[ServiceProcess, ServiceProcess], stub: AuthServiceStub
) -> None:
    gw1, _ = two_gateways
    await asyncio.to_thread(wait_until, lambda: "watching revocations" in gw1.logs(), 10, "revocation watch")
    old, _ = await sub_token(stub, "erin", "$chat:vault")
    issued_before = int(time.time()) + 1
    await stub.RevokeUser(RevokeUserRequest(user="erin", issued_before=issued_before))
    # Tokens issued from that second on are not revoked.
    await wait_until_async(lambda: time.time() >= issued_before, 5, "the revocation's second to pass")
    erin = await raw_connected(ws_url(gw1), (await issue(stub, "erin"))[0])
    fresh, _ = await sub_token(stub, "erin", "$chat:annex")
    await erin.subscribe("$chat:annex", token=fresh)
    with contextlib.suppress(ConnectionError):
        await erin.command("subscribe", {"channel": "$chat:vault", "token": old})
    assert await closed_code(erin) == 3500
