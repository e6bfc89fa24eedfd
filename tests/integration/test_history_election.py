"""Recovery rides through a JetStream stream leader election: a real 3-node cluster, its leader killed or stalled.

While a namespace's stream elects a new leader (4-10 s), nothing stored is
lost, so a client that resubscribes then must not lose its state: its
recovering subscribe ends ``recovered: true`` with every missed publication,
or with a temporary error (code 100, ``temporary: true``) that an SDK retries
until it succeeds - never ``recovered: false`` or error 112. A killed leader's
election is shorter than the history service's read deadline, so there it
ends ``recovered: true`` at the first attempt. A stalled (SIGSTOPped) node
keeps its routes until they time out, and direct gets routed to it meanwhile
go unanswered, so that case may take a temporary error first.

The test prints its figures (``-s``): how each recovering subscribe made
during the stall ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as Nats
from websockets.exceptions import ConnectionClosed, InvalidStatus

from meshcast.bus import Subjects, connect
from meshcast.gateway.app import Gateway
from meshcast.testing import NatsCluster, NatsServer, timeout, within

from .harness import GatewayFactory, HistoryFactory, JsonClient, connected_client

NAMESPACES = """
namespaces:
  - name: room
    history_size: 100
    history_ttl: 300
    recovery: true
    allow_publish: true
    recovery_max_publications: 100
"""
CHANNEL = "room:election"
STREAM = Subjects().stream_name("room")
# Recovering subscribes started during the stall, one every STAGGER seconds.
CLIENTS = 16
STAGGER = 0.5
# SubscribeRequest.flag: error 112 instead of "recovered: false".
REJECT_UNRECOVERED = 2


@dataclass
class Stack:
    cluster: NatsCluster
    admin: Nats
    gateway: Gateway


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    cluster = NatsCluster.start(tmp_path / "cluster")
    try:
        yield cluster
    finally:
        for node in cluster.nodes:
            if node.process is not None:
                os.kill(node.process.pid, signal.SIGCONT)  # a stalled node stops like the others
        cluster.stop()


@pytest.fixture
def nats_url(cluster: NatsCluster) -> str:
    """The services' NATS (the factories'): every node, node 1 first (they do not randomize)."""
    return ",".join(cluster.urls)


@pytest.fixture
async def stack(
    cluster: NatsCluster, make_history: HistoryFactory, make_gateway: GatewayFactory
) -> AsyncIterator[Stack]:
    """History (R3) and a gateway, both on node 1 (an admin connection on node 3)."""
    await make_history(NAMESPACES, nats_randomize=False, history_replicas=3, history_read_deadline=timeout(15))
    gateway = await make_gateway(NAMESPACES, nats_randomize=False)
    admin = await connect(cluster.urls[::-1], name="admin", randomize=False)
    try:
        yield Stack(cluster, admin, gateway)
    finally:
        await admin.close()


async def leader(admin: Nats) -> str:
    info = await admin.jetstream(timeout=timeout(5)).stream_info(STREAM)
    assert info.cluster is not None
    return info.cluster.leader or ""


async def move_leader(admin: Nats, services: str, onto_services: bool) -> str:
    """The stream's leader, stepped down until it is (or is not) `services`' node."""

    async def moved() -> str:
        current = await leader(admin)
        while current == "" or (current == services) != onto_services:
            if current:
                await admin.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{STREAM}", b"", timeout=timeout(5))
            await asyncio.sleep(0.2)
            current = await leader(admin)
        return current

    return await within(moved(), 30)


def node_named(cluster: NatsCluster, name: str) -> NatsServer:
    [node] = [n for n in cluster.nodes if n.name == name]
    return node


async def publish_n(client: JsonClient, start: int, count: int) -> None:
    for i in range(start, start + count):
        reply = await client.command("publish", {"channel": CHANNEL, "data": {"n": i}})
        assert "error" not in reply, reply


async def slow_command(client: JsonClient, command_id: int, body: dict[str, Any], seconds: float) -> dict[str, Any]:
    """A subscribe whose reply may take as long as the gateway's history timeout
    (answering the server's pings meanwhile, as SDKs do)."""
    await client.send({"id": command_id, "subscribe": body})
    while True:
        for reply in await client.recv(seconds):
            if reply.get("id") == command_id:
                return reply
            if not reply:
                await client.send({})


async def connect_like_an_sdk(gateway: Gateway, outcomes: list[str]) -> JsonClient:
    """Connect; while the gateway refuses (its own NATS connection is being re-established), again."""
    for _ in range(100):
        try:
            return await connected_client(gateway, "bob")
        except InvalidStatus:
            outcomes.append("connection refused")
            await asyncio.sleep(0.5)
    raise AssertionError("the gateway never admitted the client")


async def recover_like_an_sdk(gateway: Gateway, epoch: str, offset: int, flag: int, missed: list[int]) -> list[str]:
    """Subscribe with recovery as SDKs do: after a temporary error, again; after a
    reconnect close (3000-3499), reconnect and again. Every reply, as an outcome."""
    outcomes: list[str] = []
    body: dict[str, Any] = {"channel": CHANNEL, "recover": True, "epoch": epoch, "offset": offset, "flag": flag}
    delay = 0.2
    client = await connect_like_an_sdk(gateway, outcomes)
    for command_id in range(1000, 1100):
        try:
            reply = await slow_command(client, command_id, body, 30)
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else 0
            outcomes.append(f"closed {code}")
            if not 3000 <= code < 3500:
                return outcomes
            client = await connect_like_an_sdk(gateway, outcomes)
            continue
        error = reply.get("error")
        if error is not None:
            temporary = error.get("temporary", False)
            outcomes.append("temporary error" if temporary else f"error {error['code']}")
            if not temporary:
                return outcomes
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            continue
        result = reply["subscribe"]
        if not result.get("recovered", False):
            outcomes.append("recovered: false")
            return outcomes
        assert [p["data"]["n"] for p in result.get("publications", [])] == missed, "complete, in order"
        outcomes.append("recovered")
        await client.ws.close()
        return outcomes
    raise AssertionError("no end to the retries")


@pytest.mark.parametrize("how", ["kill", "stall", "kill-services-node"])
async def test_recovery_during_a_leader_election_never_gives_up_the_clients_state(stack: Stack, how: str) -> None:
    alice = await connected_client(stack.gateway, "alice")
    bob = await connected_client(stack.gateway, "bob")
    sub = (await bob.command("subscribe", {"channel": CHANNEL}))["subscribe"]
    await publish_n(alice, 0, 3)
    offsets: list[int] = []
    while len(offsets) < 3:
        push = (await bob.next_push())["push"]
        if "pub" in push:
            offsets.append(push["pub"]["offset"])
    await bob.ws.close()
    await publish_n(alice, 3, 5)  # bob misses 3..7

    services = stack.cluster.nodes[0].name
    old = node_named(stack.cluster, await move_leader(stack.admin, services, how == "kill-services-node"))
    assert old.process is not None
    if how.startswith("kill"):
        old.kill()
    else:
        os.kill(old.process.pid, signal.SIGSTOP)

    async def one(i: int) -> list[str]:
        await asyncio.sleep(i * STAGGER)
        flag = REJECT_UNRECOVERED if i % 2 else 0
        return await recover_like_an_sdk(stack.gateway, sub["epoch"], offsets[-1], flag, list(range(3, 8)))

    results = await within(asyncio.gather(*(one(i) for i in range(CLIENTS))), 120)
    figures = Counter(outcome for outcomes in results for outcome in outcomes)
    refused = sum(1 for outcomes in results if outcomes[-1] != "recovered")
    print(
        f"\nleader {how}: {CLIENTS} recovering subscribes during the election, {refused} refused;",
        f"replies {dict(figures)}",
    )
    assert refused == 0, results
    if how != "stall":
        # An election (4-10 s) is shorter than the read deadline: ridden through, no error at all.
        assert figures["temporary error"] == 0, results
    live = await connect([n.url for n in stack.cluster.nodes if n is not old], name="admin-2")
    try:
        await within(elected_other_than(live, old.name), 30)
    finally:
        await live.close()


async def elected_other_than(admin: Nats, old: str) -> None:
    """Returns once the stream reports a leader other than `old` (a stalled cluster may not answer at once)."""
    while True:
        with contextlib.suppress(TimeoutError):
            if (await leader(admin)) not in ("", old):
                return
        await asyncio.sleep(0.2)
