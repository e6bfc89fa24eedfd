"""A gateway paused past the gateway timeout (SIGSTOP, then SIGCONT), with real processes.

What subscribers (join/leave pushes through the other gateway) and backends
(`meshcast.presence.v1.events.>`) are told must always agree with what
`presence` answers, each change told once, with two presence instances
running (only one may announce). NATS runs with each service's own user,
as deployed, so the handshakes stay within their permissions.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from centrifuge import Client, JoinContext, LeaveContext, Subscription
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg

from meshcast.bus import Subjects
from meshcast.common.natsauth import (
    BACKEND,
    GATEWAY,
    PRESENCE,
    USERS,
    generate_password,
    inbox_prefix,
    render_authorization,
)
from meshcast.proto.presence_pb2 import PresenceEvent
from meshcast.testing import NatsServer, ServiceProcess, gateway_process, presence_process, timeout, within, ws_url

from .conftest import SECRET
from .sdk import Recorder, sdk_client

pytestmark = pytest.mark.e2e

NAMESPACES = """
namespaces:
  - name: room
    presence: true
    join_leave: true
"""
CHANNEL = "room:pause"
HEARTBEAT = 0.3
GATEWAY_TIMEOUT = 2.0

Told = tuple[str, str]  # ("join" | "leave", user)


class Pushes(Recorder):
    """Join and leave pushes a subscriber receives."""

    def __init__(self) -> None:
        super().__init__()
        self.told: list[Told] = []

    async def on_join(self, ctx: JoinContext) -> None:
        self.told.append(("join", ctx.info.user))

    async def on_leave(self, ctx: LeaveContext) -> None:
        self.told.append(("leave", ctx.info.user))


class Backend:
    """A backend listening to every presence event on NATS."""

    def __init__(self) -> None:
        self.told: list[Told] = []
        self.expired: list[str] = []
        self._nc: Nats | None = None

    async def start(self, url: str) -> None:
        self._nc = await nats.connect(url, inbox_prefix=inbox_prefix(BACKEND))
        await self._nc.subscribe(Subjects().presence_events_wildcard(), cb=self._on_event)
        await self._nc.flush()

    async def _on_event(self, msg: Msg) -> None:
        event = PresenceEvent()
        event.ParseFromString(msg.data)
        if event.channel != CHANNEL:
            return
        kind = "join" if event.kind == PresenceEvent.JOIN else "leave"
        self.told.append((kind, event.info.user))
        if event.expired:
            self.expired.append(event.info.user)

    async def stop(self) -> None:
        if self._nc is not None:
            await self._nc.close()


@dataclass
class Secured:
    server: NatsServer
    passwords: dict[str, str]

    def url(self, user: str) -> str:
        return self.server.url_for(user, self.passwords[user])

    def env(self, user: str) -> dict[str, str]:
        return {"MESHCAST_NATS_INBOX_PREFIX": inbox_prefix(user)}


@dataclass
class Stack:
    nats: Secured
    stable: ServiceProcess  # the observer's gateway
    paused: ServiceProcess  # the gateway that is stopped and continued
    presence: list[ServiceProcess]

    def stop_gateway(self) -> None:
        assert self.paused.process is not None
        os.kill(self.paused.process.pid, signal.SIGSTOP)

    def continue_gateway(self) -> None:
        if self.paused.process is not None:
            os.kill(self.paused.process.pid, signal.SIGCONT)


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Secured]:
    passwords = {user: generate_password() for user in USERS}
    server = NatsServer(tmp_path / "nats", authorization=render_authorization(passwords)).start()
    try:
        yield Secured(server, passwords)
    finally:
        server.stop()


@pytest.fixture
def stack(secured: Secured, tmp_path: Path) -> Iterator[Stack]:
    namespaces = tmp_path / "namespaces.yaml"
    namespaces.write_text(NAMESPACES)
    gateways = [
        gateway_process(
            tmp_path,
            [secured.url(GATEWAY)],
            secret=SECRET,
            namespaces_file=namespaces,
            name=f"gateway-{i + 1}",
            extra_env={"MESHCAST_PRESENCE_HEARTBEAT_INTERVAL": str(HEARTBEAT), **secured.env(GATEWAY)},
        )
        for i in range(2)
    ]
    presence = [
        presence_process(
            tmp_path,
            [secured.url(PRESENCE)],
            name=f"presence-{i + 1}",
            extra_env={
                "MESHCAST_GATEWAY_TIMEOUT": str(GATEWAY_TIMEOUT),
                "MESHCAST_SWEEP_INTERVAL": "0.1",
                "MESHCAST_STARTUP_SYNC_WAIT": "0.3",
                **secured.env(PRESENCE),
            },
        )
        for i in range(2)
    ]
    started: list[ServiceProcess] = []
    stack = Stack(secured, gateways[0], gateways[1], presence)
    try:
        for proc in (*presence, *gateways):
            started.append(proc.start(wait=30))
        yield stack
    finally:
        stack.continue_gateway()  # a stopped process cannot act on SIGTERM
        for proc in started:
            proc.terminate()
        violations = [
            line for proc in started for line in proc.logs().splitlines() if "permissions violation" in line.lower()
        ]
        assert not violations, violations


async def presence_users(sub: Subscription) -> list[str]:
    result = await within(sub.presence())
    return sorted(info.user for info in result.clients.values())


async def until(what: str, check: Callable[[], Awaitable[bool]], seconds: float) -> None:
    """Poll `check` (remote state: there is no local event to wait on) within `seconds`."""

    async def poll() -> None:
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    try:
        await within(poll(), seconds)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def believed(told: list[Told]) -> set[str]:
    """Who is present according to the joins and leaves told, in order."""
    present: set[str] = set()
    for kind, user in told:
        if kind == "join":
            present.add(user)
        else:
            present.discard(user)
    return present


def of(told: list[Told], user: str) -> list[str]:
    return [kind for kind, who in told if who == user]


class Scenario:
    """The observer on the stable gateway; members on the paused one."""

    def __init__(self, stack: Stack, backend: Backend, pushes: Pushes, observer: Client, sub: Subscription) -> None:
        self.stack = stack
        self.backend = backend
        self.pushes = pushes
        self.observer = observer
        self.sub = sub
        self.members: dict[str, Client] = {}

    async def join(self, user: str) -> None:
        client = sdk_client(ws_url(self.stack.paused), user)
        await within(client.connect())
        sub = client.new_subscription(CHANNEL)
        await sub.subscribe()
        await sub.ready(timeout=timeout(5))
        self.members[user] = client

    async def agreed(self, present: set[str], seconds: float = 10.0) -> None:
        """Presence lists `present` (and the observer), and both listeners were told just that."""
        expected = sorted({*present, "observer"})

        async def check() -> bool:
            return (
                await presence_users(self.sub) == expected
                and believed(self.backend.told) == {*present, "observer"}
                and believed(self.pushes.told) == {*present, "observer"}
            )

        try:
            await until(f"presence, pushes and events to show {expected}", check, seconds)
        except AssertionError as exc:
            seen = await presence_users(self.sub)
            told = f"events {self.backend.told}, pushes {self.pushes.told}"
            raise AssertionError(f"{exc}: presence {seen}, {told}") from None

    async def settled(self) -> None:
        """A bounded quiet moment for late (duplicate) announcements to show up."""
        await asyncio.sleep(timeout(1.0))


@pytest.fixture
async def scenario(stack: Stack) -> AsyncIterator[Scenario]:
    backend = Backend()
    await backend.start(stack.nats.url(BACKEND))
    pushes = Pushes()
    observer = sdk_client(ws_url(stack.stable), "observer")
    await within(observer.connect())
    sub = observer.new_subscription(CHANNEL, events=pushes, join_leave=True)
    await sub.subscribe()
    await sub.ready(timeout=timeout(5))
    scenario = Scenario(stack, backend, pushes, observer, sub)
    try:
        yield scenario
    finally:
        stack.continue_gateway()
        for client in (observer, *scenario.members.values()):
            await within(client.disconnect())
        await backend.stop()


async def test_members_of_a_paused_gateway_leave_then_join_again_each_told_once(scenario: Scenario) -> None:
    await scenario.join("stay")
    await scenario.join("gone")
    await scenario.agreed({"stay", "gone"})

    scenario.stack.stop_gateway()
    try:
        await scenario.agreed(set(), seconds=GATEWAY_TIMEOUT + 8)
        assert sorted(scenario.backend.expired) == ["gone", "stay"]
        # Closes while the gateway is stopped: it reads them when it continues.
        await within(scenario.members.pop("gone").disconnect())
    finally:
        scenario.stack.continue_gateway()

    await scenario.agreed({"stay"})
    # The last change on that gateway: everything it sent before has arrived.
    await within(scenario.members.pop("stay").disconnect())
    await scenario.agreed(set())
    await scenario.settled()
    for told in (scenario.backend.told, scenario.pushes.told):
        assert of(told, "stay") == ["join", "leave", "join", "leave"], told
        assert of(told, "gone") == ["join", "leave"], told
    assert sorted(scenario.backend.expired) == ["gone", "stay"]


async def test_a_gateway_paused_twice_is_expired_twice_with_leaves_each_time(scenario: Scenario) -> None:
    await scenario.join("stay")
    await scenario.agreed({"stay"})
    for _ in range(2):
        scenario.stack.stop_gateway()
        try:
            await scenario.agreed(set(), seconds=GATEWAY_TIMEOUT + 8)
        finally:
            scenario.stack.continue_gateway()
        await scenario.agreed({"stay"})
    await scenario.settled()
    for told in (scenario.backend.told, scenario.pushes.told):
        assert of(told, "stay") == ["join", "leave", "join", "leave", "join"], told
    assert scenario.backend.expired == ["stay", "stay"]
