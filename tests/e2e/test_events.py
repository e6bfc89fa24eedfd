"""Lifecycle events on JetStream, with real processes: the guarantee of services/events.

Every connect in the stream is followed by exactly one disconnect for that
client, every subscribe by exactly one unsubscribe, and each channel's
occupied/vacated alternate, whatever happens to a gateway: SIGKILL, SIGSTOP
past the gateway timeout then SIGCONT, its NATS link cut (through the test
TCP balancer) past the timeout or briefly. Two gateways, one presence
instance, two events service instances (both announce; the stream keeps one
of each; both killed and restarted, they resume from their checkpoints), NATS
with each service's own user, as deployed. The tests read the
stream as a backend does (the `backend` user, an ordered consumer), and the
README's durable consumer example runs against it.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg

from meshcast.bus import Subjects
from meshcast.common.natsauth import (
    BACKEND,
    EVENTS,
    GATEWAY,
    PRESENCE,
    USERS,
    generate_password,
    inbox_prefix,
    render_authorization,
)
from meshcast.proto.events_pb2 import Event
from meshcast.testing import (
    NatsServer,
    ServiceProcess,
    events_process,
    gateway_process,
    presence_process,
    timeout,
    within,
    ws_url,
)
from meshcast.testing.balancer import TcpBalancer
from meshcast.testing.raw import RawClient
from meshcast.testing.tokens import connection_jwt

from .conftest import ROOT, SECRET

pytestmark = pytest.mark.e2e

SUBJECTS = Subjects()
NAMESPACES = """
namespaces:
  - name: room
    presence: true
    allow_publish: true
    publish_events: true
"""
HEARTBEAT = 0.3
# A gateway silent this long is dead (scaled, so a busy machine's late heartbeat is not).
GATEWAY_TIMEOUT = timeout(3.0)
# Presence's sweep, the publishes to the stream, the events service's announcements.
ANNOUNCE_SLACK = timeout(4.0)
README = ROOT / "services" / "events" / "README.md"


@dataclass(frozen=True)
class Stored:
    seq: int
    subject: str
    msg_id: str
    event: Event

    @property
    def kind(self) -> str:
        return self.event.WhichOneof("kind") or ""

    @property
    def client(self) -> str:
        body = getattr(self.event, self.kind)
        return str(getattr(body, "client", ""))

    @property
    def channel(self) -> str:
        body = getattr(self.event, self.kind)
        return str(getattr(body, "channel", ""))


class EventLog:
    """The events stream from its start, as a backend reads it (ordered consumer)."""

    def __init__(self) -> None:
        self.stored: list[Stored] = []
        self._nc: Nats | None = None
        self._changed = asyncio.Event()

    async def start(self, url: str) -> None:
        self._nc = await nats.connect(url, inbox_prefix=inbox_prefix(BACKEND))
        js = self._nc.jetstream(timeout=timeout(5))
        await js.subscribe(
            SUBJECTS.events_wildcard(), stream=SUBJECTS.events_stream, ordered_consumer=True, cb=self._on_msg
        )

    async def stop(self) -> None:
        if self._nc is not None:
            await self._nc.close()

    async def _on_msg(self, msg: Msg) -> None:
        event = Event()
        event.ParseFromString(msg.data)
        msg_id = msg.headers.get("Nats-Msg-Id", "") if msg.headers else ""
        self.stored.append(Stored(msg.metadata.sequence.stream, msg.subject, msg_id, event))
        self._changed.set()

    def of(self, kind: str, client: str | None = None) -> list[Stored]:
        return [s for s in self.stored if s.kind == kind and (client is None or s.client == client)]

    async def until(self, what: str, check: Callable[[], bool], seconds: float = 10.0) -> None:
        async def wait() -> None:
            while not check():
                self._changed.clear()
                await self._changed.wait()

        try:
            await within(wait(), seconds)
        except TimeoutError:
            told = [(s.kind, s.client or s.channel) for s in self.stored]
            raise AssertionError(f"timed out waiting for {what}: {told}") from None

    async def disconnected(self, clients: list[str], seconds: float) -> None:
        await self.until(f"disconnects of {clients}", lambda: all(self.of("disconnect", c) for c in clients), seconds)

    def counted(self, n: int, *kinds: str) -> Callable[[], bool]:
        """A check: the stream holds `n` events of `kinds`."""
        return lambda: sum(len(self.of(kind)) for kind in kinds) == n

    def transitions(self, channel: str) -> list[str]:
        return [s.kind for s in self.stored if s.kind.startswith("channel_") and s.channel == channel]

    def assert_the_guarantee(self) -> None:
        """Each connect has one disconnect after it, each subscribe one unsubscribe after it and
        before its connection's disconnect, and channel transitions alternate, ending vacated."""
        starts: dict[str, int] = {}
        for stored in self.stored:
            if stored.kind == "connect":
                assert stored.client not in starts, f"second connect of {stored.client}"
                starts[stored.client] = stored.seq
        ends: dict[str, list[Stored]] = {}
        for stored in self.of("disconnect"):
            ends.setdefault(stored.client, []).append(stored)
        assert set(ends) == set(starts), (set(starts) ^ set(ends), self.stored)
        for client, told in ends.items():
            assert len(told) == 1, f"{client} disconnected {len(told)} times: {told}"
            assert told[0].seq > starts[client]
        subscriptions: dict[tuple[str, int], list[Stored]] = {}
        for stored in self.stored:
            if stored.kind == "subscribe":
                subscriptions.setdefault((stored.event.gateway, stored.event.sequence), []).append(stored)
            elif stored.kind == "unsubscribe":
                key = (stored.event.gateway, stored.event.unsubscribe.subscription)
                subscriptions.setdefault(key, []).append(stored)
        for key, told in subscriptions.items():
            assert [s.kind for s in told] == ["subscribe", "unsubscribe"], (key, told)
            assert told[1].seq < ends[told[1].client][0].seq, f"{key} ended after its connection"
        for channel in {s.channel for s in self.stored if s.kind.startswith("channel_")}:
            kinds = self.transitions(channel)
            assert kinds == ["channel_occupied", "channel_vacated"] * (len(kinds) // 2), (channel, kinds)


@dataclass
class Secured:
    server: NatsServer
    passwords: dict[str, str]

    def url(self, user: str, port: int | None = None) -> str:
        url = self.server.url_for(user, self.passwords[user])
        return url if port is None else url.replace(f":{self.server.port}", f":{port}")

    def env(self, user: str) -> dict[str, str]:
        return {"MESHCAST_NATS_INBOX_PREFIX": inbox_prefix(user)}


@dataclass
class Stack:
    nats: Secured
    workdir: Path
    stable: ServiceProcess
    victim: ServiceProcess  # connects to NATS through `balancer`
    balancer: TcpBalancer
    services: list[ServiceProcess]
    clients: list[RawClient] = field(default_factory=list)

    async def client(self, gateway: ServiceProcess, user: str, *channels: str) -> tuple[RawClient, str]:
        client = await RawClient.open(ws_url(gateway))
        self.clients.append(client)
        reply = await client.command("connect", {"token": connection_jwt(SECRET, user), "name": "e2e"})
        assert "connect" in reply, reply
        for channel in channels:
            await client.subscribe(channel)
        return client, str(reply["connect"]["client"])

    def signal_victim(self, sig: signal.Signals) -> None:
        assert self.victim.process is not None
        os.kill(self.victim.process.pid, sig)

    async def settled(self) -> None:
        """A bounded quiet moment for a late (second) announcement to show up."""
        await asyncio.sleep(timeout(2.0))


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Secured]:
    passwords = {user: generate_password() for user in USERS}
    server = NatsServer(tmp_path / "nats", authorization=render_authorization(passwords)).start()
    try:
        yield Secured(server, passwords)
    finally:
        server.stop()


@pytest.fixture
async def stack(secured: Secured, tmp_path: Path) -> AsyncIterator[Stack]:
    namespaces = tmp_path / "namespaces.yaml"
    namespaces.write_text(NAMESPACES)
    balancer = await TcpBalancer([("127.0.0.1", secured.server.port)]).start()
    gateway_env = {
        "MESHCAST_PRESENCE_HEARTBEAT_INTERVAL": str(HEARTBEAT),
        "MESHCAST_EVENTS_ENABLED": "true",
        **secured.env(GATEWAY),
    }
    stable, victim = (
        gateway_process(
            tmp_path, [url], secret=SECRET, namespaces_file=namespaces, name=name, extra_env=dict(gateway_env)
        )
        for name, url in (
            ("gateway-stable", secured.url(GATEWAY)),
            ("gateway-victim", secured.url(GATEWAY, balancer.port)),
        )
    )
    presence = presence_process(
        tmp_path,
        [secured.url(PRESENCE)],
        extra_env={
            "MESHCAST_GATEWAY_TIMEOUT": f"{GATEWAY_TIMEOUT:g}",
            "MESHCAST_SWEEP_INTERVAL": "0.1",
            "MESHCAST_STARTUP_SYNC_WAIT": "0.3",
            **secured.env(PRESENCE),
        },
    )
    events = [
        events_process(
            tmp_path,
            [secured.url(EVENTS)],
            name=f"events-{n}",
            extra_env={"MESHCAST_CHECKPOINT_INTERVAL": "1", **secured.env(EVENTS)},
        )
        for n in (1, 2)
    ]
    stack = Stack(secured, tmp_path, stable, victim, balancer, [*events, presence])
    started: list[ServiceProcess] = []
    try:
        for proc in (*events, presence, stable, victim):
            # In a thread: the victim reaches NATS through the balancer, served by this loop.
            started.append(await asyncio.to_thread(proc.start, 30))
        yield stack
    finally:
        if victim.process is not None:
            stack.signal_victim(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        balancer.heal()
        for client in stack.clients:
            await client.abort()
        for proc in reversed(started):
            await asyncio.to_thread(proc.terminate)
        await balancer.stop()
        violations = [
            line for proc in started for line in proc.logs().splitlines() if "permissions violation" in line.lower()
        ]
        assert not violations, violations


@pytest.fixture
async def log(stack: Stack) -> AsyncIterator[EventLog]:
    log = EventLog()
    await log.start(stack.nats.url(BACKEND))
    try:
        yield log
    finally:
        await log.stop()


async def closed_by_server(client: RawClient) -> int:
    """The close code the gateway ended `client`'s connection with."""
    await within(client.ws.wait_closed(), 10)
    code = client.ws.close_code
    assert code is not None
    return code


async def test_a_killed_gateways_clients_are_disconnected_once_within_the_gateway_timeout(
    stack: Stack, log: EventLog
) -> None:
    victims = [(await stack.client(stack.victim, f"v{n}", "room:kill", f"room:v{n}"))[1] for n in range(3)]
    observer, watcher = await stack.client(stack.stable, "observer", "room:kill")
    await log.until("every subscribe", lambda: len(log.of("subscribe")) == 7)

    loop = asyncio.get_running_loop()
    stack.victim.kill()
    killed_at = loop.time()
    await log.disconnected(victims, GATEWAY_TIMEOUT + ANNOUNCE_SLACK + 5)
    assert loop.time() - killed_at < GATEWAY_TIMEOUT + ANNOUNCE_SLACK
    for client in victims:
        [told] = log.of("disconnect", client)
        assert told.event.disconnect.gateway_died
        assert told.event.source == Event.EVENTS
        assert told.msg_id == f"disconnect:{client}"
        assert {s.event.unsubscribe.gateway_died for s in log.of("unsubscribe", client)} == {True}
    assert [s.event.gateway for s in log.of("gateway_expired")] == [log.of("connect", victims[0])[0].event.gateway]
    assert all(log.transitions(f"room:v{n}") == ["channel_occupied", "channel_vacated"] for n in range(3))
    assert log.transitions("room:kill") == ["channel_occupied"]  # the observer is still there

    await observer.close()
    await log.disconnected([watcher], 10)
    await stack.settled()
    log.assert_the_guarantee()
    assert log.transitions("room:kill") == ["channel_occupied", "channel_vacated"]


async def test_a_gateway_paused_past_its_timeout_then_continued_tells_no_end_twice(stack: Stack, log: EventLog) -> None:
    stays, stayer = await stack.client(stack.victim, "stay", "room:pause")
    leaves, leaver = await stack.client(stack.victim, "leave", "room:pause")
    await log.until("both subscribes", lambda: len(log.of("subscribe")) == 2)

    stack.signal_victim(signal.SIGSTOP)
    try:
        await log.disconnected([stayer, leaver], GATEWAY_TIMEOUT + ANNOUNCE_SLACK + 5)
        # Well past the timeout; one client leaves while the gateway is stopped.
        await asyncio.sleep(GATEWAY_TIMEOUT)
        await leaves.abort()
    finally:
        stack.signal_victim(signal.SIGCONT)

    # Back, it learns it was declared dead and closes what is left (clients reconnect).
    assert await closed_by_server(stays) == 3010
    # It serves new connections as before, and tells of them.
    fresh, newcomer = await stack.client(stack.victim, "fresh", "room:pause")
    await fresh.close()
    await log.disconnected([newcomer], 10)
    await stack.settled()
    log.assert_the_guarantee()
    assert all(log.of("disconnect", c)[0].event.disconnect.gateway_died for c in (stayer, leaver))
    assert not log.of("disconnect", newcomer)[0].event.disconnect.gateway_died
    assert log.transitions("room:pause") == ["channel_occupied", "channel_vacated"] * 2


async def test_a_gateway_cut_from_nats_past_its_timeout_tells_no_end_twice(stack: Stack, log: EventLog) -> None:
    stays, stayer = await stack.client(stack.victim, "stay", "room:cut")
    leaves, leaver = await stack.client(stack.victim, "leave", "room:cut")
    await log.until("both subscribes", lambda: len(log.of("subscribe")) == 2)

    await stack.balancer.cut()
    try:
        # The gateway runs on: a client leaving now has its end queued, not sent.
        await leaves.close()
        await log.disconnected([stayer, leaver], GATEWAY_TIMEOUT + ANNOUNCE_SLACK + 5)
        await asyncio.sleep(GATEWAY_TIMEOUT)
    finally:
        stack.balancer.heal()

    assert await closed_by_server(stays) == 3010
    fresh, newcomer = await stack.client(stack.victim, "fresh", "room:cut")
    await fresh.close()
    await log.disconnected([newcomer], 15)
    await stack.settled()
    log.assert_the_guarantee()
    # The leaver's own end, queued during the cut, was dropped: it was told for the dead gateway.
    assert log.of("disconnect", leaver)[0].event.disconnect.gateway_died


async def test_a_brief_nats_cut_delays_the_events_and_loses_none(stack: Stack, log: EventLog) -> None:
    stays, stayer = await stack.client(stack.victim, "stay", "room:blip")
    leaves, leaver = await stack.client(stack.victim, "leave", "room:blip")
    await log.until("both subscribes", lambda: len(log.of("subscribe")) == 2)
    await stack.balancer.cut()
    try:
        await leaves.close()
        await asyncio.sleep(GATEWAY_TIMEOUT / 10)
    finally:
        stack.balancer.heal()
    await log.disconnected([leaver], 15)
    assert not log.of("disconnect", leaver)[0].event.disconnect.gateway_died
    assert not log.of("gateway_expired")
    await stays.close()
    await log.disconnected([stayer], 10)
    await stack.settled()
    log.assert_the_guarantee()


async def test_occupied_and_vacated_alternate_across_two_gateways_announced_once(stack: Stack, log: EventLog) -> None:
    channel = "room:occ"
    one, first = await stack.client(stack.stable, "one")
    two, second = await stack.client(stack.victim, "two")
    steps: list[tuple[RawClient, str]] = [
        (one, "subscribe"),
        (two, "subscribe"),
        (one, "unsubscribe"),
        (two, "unsubscribe"),  # vacated
        (two, "subscribe"),  # occupied
        (one, "subscribe"),
        (two, "unsubscribe"),
        (one, "unsubscribe"),  # vacated
    ]
    for n, (client, method) in enumerate(steps, 1):
        reply = await client.command(method, {"channel": channel})
        assert method in reply, reply
        # Each stored before the next: two gateways' events are in the stream in the order
        # they were stored, which is the order the transitions follow.
        await log.until(f"step {n}", log.counted(n, "subscribe", "unsubscribe"))
    await log.until("the last vacated", lambda: len(log.transitions(channel)) == 4)
    await one.close()
    await two.close()
    await log.disconnected([first, second], 10)
    await stack.settled()
    assert log.transitions(channel) == ["channel_occupied", "channel_vacated"] * 2
    # Both events instances announced: the stream kept each transition once, with one id.
    ids = [s.msg_id for s in log.stored if s.kind.startswith("channel_")]
    assert len(ids) == len(set(ids)) == 4
    log.assert_the_guarantee()


def readme_example() -> str:
    text = README.read_text()
    match = re.search(r"<!-- durable consumer example -->\s*```python\n(.*?)```", text, re.S)
    assert match, "the README's durable consumer example"
    return match.group(1)


async def run_example(stack: Stack, script: Path, limit: int) -> list[tuple[int, str]]:
    """Run the README's example as a backend: the (stream seq, kind) of the `limit` events it reads."""
    env = {
        **os.environ,
        "NATS_URL": stack.nats.url(BACKEND),
        "DURABLE": "billing",
        "LIMIT": str(limit),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await within(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    lines = [line.split() for line in out.decode().splitlines() if line]
    return [(int(words[0]), words[1]) for words in lines]


async def test_a_backend_durable_consumer_that_was_down_reads_what_it_missed_in_order(
    stack: Stack, log: EventLog, tmp_path: Path
) -> None:
    script = tmp_path / "durable_consumer.py"
    script.write_text(readme_example())
    early, first = await stack.client(stack.stable, "early", "room:durable")
    await log.until("early's subscribe and occupied", lambda: len(log.stored) == 3)
    assert await run_example(stack, script, 3) == [(s.seq, s.kind) for s in log.stored]

    # The backend is down: the story goes on without it.
    await early.close()
    late, second = await stack.client(stack.victim, "late", "room:durable")
    await late.close()
    await log.disconnected([first, second], 10)
    await log.until("the last vacated", lambda: len(log.transitions("room:durable")) == 4)
    await stack.settled()
    missed = [(s.seq, s.kind) for s in log.stored[3:]]
    assert sorted(kind for _, kind in missed) == sorted(
        ["connect", "subscribe", "channel_occupied"] + ["unsubscribe", "disconnect", "channel_vacated"] * 2
    )
    # Back, from where it acked: exactly what it missed, in stream order.
    assert await run_example(stack, script, len(missed)) == missed


async def test_events_instances_killed_and_restarted_tell_what_they_owe_once(stack: Stack, log: EventLog) -> None:
    """Both announcers down: what happens meanwhile is announced when they are back (from
    their checkpoints), each thing once, though both tell it."""
    events = stack.services[:2]
    one, first = await stack.client(stack.stable, "one", "room:restart")
    await log.until("occupied", lambda: log.transitions("room:restart") == ["channel_occupied"])
    await asyncio.sleep(timeout(1.5))  # a checkpoint after it (every second here)
    for proc in events:
        proc.kill()
    await one.command("unsubscribe", {"channel": "room:restart"})
    _, second = await stack.client(stack.victim, "two", "room:restart")
    await log.until("the subscribe", log.counted(2, "subscribe"))
    stack.victim.kill()
    await log.until("its expiry", lambda: bool(log.of("gateway_expired")), GATEWAY_TIMEOUT + ANNOUNCE_SLACK)
    assert log.transitions("room:restart") == ["channel_occupied"]  # nobody to tell the rest yet
    for proc in events:
        await asyncio.to_thread(proc.start, 30)
    await log.disconnected([second], 15)
    await one.close()
    await log.disconnected([first], 10)
    await stack.settled()
    assert log.transitions("room:restart") == ["channel_occupied", "channel_vacated"] * 2
    assert log.of("disconnect", second)[0].event.disconnect.gateway_died
    log.assert_the_guarantee()
