"""Presence end to end: real gateway and presence processes, the unmodified SDK."""

from __future__ import annotations

import asyncio

import pytest
from centrifuge import JoinContext, LeaveContext

from meshcast.testing import ServiceProcess, timeout, within, ws_url

from .sdk import Recorder, sdk_client

pytestmark = pytest.mark.e2e


class Watcher(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.joins: list[str] = []
        self.leaves: list[str] = []

    async def on_join(self, ctx: JoinContext) -> None:
        self.joins.append(ctx.info.user)

    async def on_leave(self, ctx: LeaveContext) -> None:
        self.leaves.append(ctx.info.user)


async def test_sigkilled_gateway_members_leave_with_pushes(two_gateways: tuple[ServiceProcess, ServiceProcess]) -> None:
    gw1, gw2 = two_gateways
    watcher = Watcher()
    observer = sdk_client(ws_url(gw1), "observer")
    await within(observer.connect())
    sub = observer.new_subscription("chat:presence", events=watcher, join_leave=True)
    await sub.subscribe()
    await sub.ready(timeout=5)

    doomed = sdk_client(ws_url(gw2), "doomed")
    await within(doomed.connect())
    doomed_sub = doomed.new_subscription("chat:presence")
    await doomed_sub.subscribe()
    await doomed_sub.ready(timeout=5)

    async def members() -> set[str]:
        result = await sub.presence()
        return {info.user for info in result.clients.values()}

    async def until(predicate_users: set[str]) -> None:
        # Polling a remote service: there is no local event to wait on.
        while await members() != predicate_users:  # noqa: ASYNC110
            await asyncio.sleep(0.1)

    await within(until({"observer", "doomed"}), 10)
    stats = await sub.presence_stats()
    assert (stats.num_clients, stats.num_users) == (2, 2)
    assert "doomed" in watcher.joins

    gw2.kill()  # no goodbye: the presence service notices the silence (timeout 3 s here)
    await within(until({"observer"}), timeout(15))
    for _ in range(50):
        if "doomed" in watcher.leaves:
            break
        await asyncio.sleep(0.1)
    assert "doomed" in watcher.leaves
    await observer.disconnect()
