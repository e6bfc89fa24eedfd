"""Long sessions with the unmodified SDK: connection refresh, private channels, sub_refresh."""

from __future__ import annotations

import time

import pytest
from centrifuge import Client, SubscriptionUnsubscribedError

from meshcast.testing import ServiceProcess, token_ttl, wait_until_async, within, ws_url
from meshcast.testing.tokens import connection_jwt, subscription_jwt

from .conftest import SECRET
from .sdk import ConnectionEvents, Recorder, sdk_client

pytestmark = pytest.mark.e2e


TTL = token_ttl(2)  # short enough to be refreshed in the test, long enough for a busy machine


async def test_sdk_refreshes_its_connection_and_private_subscription(
    two_gateways: tuple[ServiceProcess, ServiceProcess],
) -> None:
    gw1, gw2 = two_gateways
    refreshes: list[str] = []

    async def get_token() -> str:
        refreshes.append("connection")
        return connection_jwt(SECRET, "alice", ttl=TTL)

    async def get_sub_token(channel: str) -> str:
        refreshes.append(channel)
        return subscription_jwt(SECRET, "alice", channel, ttl=TTL)

    events = ConnectionEvents()
    first_expiry = int(time.time() + TTL)
    alice = Client(
        ws_url(gw1), token=connection_jwt(SECRET, "alice", exp=first_expiry), get_token=get_token, events=events
    )
    recorder = Recorder()
    await within(alice.connect())
    sub = alice.new_subscription("$chat:private", events=recorder, get_token=get_sub_token)
    await sub.subscribe()
    await sub.ready(timeout=5)

    # Both refreshed (subscribe, then sub_refresh for the channel), and past the first expiry.
    await wait_until_async(
        lambda: "connection" in refreshes and refreshes.count("$chat:private") >= 2, 2 * TTL + 10, "both refreshes"
    )
    await wait_until_async(lambda: time.time() > first_expiry + 1, TTL + 10, "the first expiry to pass")
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
