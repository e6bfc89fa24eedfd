"""Long sessions with the unmodified SDK: connection refresh, private channels, sub_refresh."""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest
from centrifuge import Client, SubscriptionUnsubscribedError

from meshcast.testing import ServiceProcess, within, ws_url

from .conftest import SECRET
from .sdk import ConnectionEvents, Recorder, sdk_client

pytestmark = pytest.mark.e2e


def short_token(user: str, ttl: float) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time() + ttl)}, SECRET, algorithm="HS256")


def sub_token(user: str, channel: str, ttl: float) -> str:
    return jwt.encode({"sub": user, "channel": channel, "exp": int(time.time() + ttl)}, SECRET, algorithm="HS256")


async def test_sdk_refreshes_its_connection_and_private_subscription(
    two_gateways: tuple[ServiceProcess, ServiceProcess],
) -> None:
    gw1, gw2 = two_gateways
    refreshes: list[str] = []

    async def get_token() -> str:
        refreshes.append("connection")
        return short_token("alice", 3)

    async def get_sub_token(channel: str) -> str:
        refreshes.append(channel)
        return sub_token("alice", channel, 3)

    events = ConnectionEvents()
    alice = Client(ws_url(gw1), token=short_token("alice", 3), get_token=get_token, events=events)
    recorder = Recorder()
    await within(alice.connect())
    sub = alice.new_subscription("$chat:private", events=recorder, get_token=get_sub_token)
    await sub.subscribe()
    await sub.ready(timeout=5)

    await asyncio.sleep(5)  # past the first expiry of both tokens (3 s)
    assert "connection" in refreshes
    assert refreshes.count("$chat:private") >= 2, refreshes  # subscribe, then sub_refresh
    assert not any(code >= 3000 for code in events.codes), events.codes
    await sub.publish({"still": "here"})
    assert await recorder.next() == {"still": "here"}

    # Without a subscription token the private channel stays closed.
    bob = sdk_client(ws_url(gw2), "bob")
    await within(bob.connect())
    intruder = bob.new_subscription("$chat:private")
    await intruder.subscribe()
    with pytest.raises(SubscriptionUnsubscribedError):
        await intruder.ready(timeout=5)
    await alice.disconnect()
    await bob.disconnect()
