"""History and recovery: a gateway and the history service in this process, real NATS JetStream."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from meshcast.bus import Subjects, connect, publish
from meshcast.common.namespaces import ChannelsConfig, Namespace
from meshcast.gateway.app import Gateway
from meshcast.history.app import HistoryApp
from meshcast.history.streams import ensure_streams, stream_specs
from meshcast.proto.history_pb2 import RemoveReply, RemoveRequest
from meshcast.testing import timeout, wait_until_async, within

from .harness import GatewayFactory, HistoryFactory, JsonClient, connected_client

NAMESPACES = """
namespaces:
  - name: room
    history_size: 100
    history_ttl: 300
    recovery: true
    allow_publish: true
    recovery_max_publications: 60
  - name: tiny
    history_size: 3
    history_ttl: 300
    recovery: true
    allow_publish: true
  - name: brief
    history_size: 10
    history_ttl: 1
    recovery: true
    allow_publish: true
  - name: live
    allow_publish: true
  - name: log
    history_size: 10
    history_ttl: 300
    allow_publish: true
  - name: sealed
    history_size: 10
    history_ttl: 300
    allow_history: false
"""


class Stack:
    def __init__(self, nats_url: str, make_history: HistoryFactory) -> None:
        self.nats_url = nats_url
        self.make_history = make_history
        self.history: HistoryApp | None = None
        self.gateway: Gateway | None = None

    async def start_history(self, namespaces: str = NAMESPACES) -> HistoryApp:
        self.history = await self.make_history(namespaces)
        return self.history

    async def stop_history(self) -> None:
        if self.history is not None:
            await self.history.stop()
            self.history = None


@pytest.fixture
async def stack(nats_url: str, make_history: HistoryFactory, make_gateway: GatewayFactory) -> Stack:
    stack = Stack(nats_url, make_history)
    await stack.start_history()
    stack.gateway = await make_gateway(NAMESPACES)
    return stack


def gw(stack: Stack) -> Gateway:
    assert stack.gateway is not None
    return stack.gateway


async def publish_n(client: JsonClient, channel: str, start: int, count: int) -> None:
    for i in range(start, start + count):
        reply = await client.command("publish", {"channel": channel, "data": {"n": i}})
        assert reply == {"id": reply["id"], "publish": {}}, reply


async def next_pubs(client: JsonClient, count: int) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    while len(got) < count:
        push = (await client.next_push())["push"]
        if "pub" in push:
            got.append(push["pub"])
    return got


async def test_subscribe_gives_position_and_publications_carry_offsets(stack: Stack) -> None:
    bob = await connected_client(gw(stack), "bob")
    alice = await connected_client(gw(stack), "alice")
    result = (await bob.command("subscribe", {"channel": "room:pos"}))["subscribe"]
    assert result["recoverable"] is True
    assert result["epoch"]
    start = result.get("offset", 0)
    await publish_n(alice, "room:pos", 0, 3)
    pubs = await next_pubs(bob, 3)
    offsets = [p["offset"] for p in pubs]
    assert offsets == sorted(offsets)
    assert offsets[0] > start
    assert [p["data"] for p in pubs] == [{"n": 0}, {"n": 1}, {"n": 2}]


async def test_acknowledged_publication_is_already_in_history(stack: Stack) -> None:
    alice = await connected_client(gw(stack), "alice")
    await publish_n(alice, "room:ack", 0, 1)
    reply = (await alice.command("history", {"channel": "room:ack", "limit": -1}))["history"]
    assert [p["data"] for p in reply["publications"]] == [{"n": 0}]


async def test_a_client_that_may_read_history_is_positioned_when_it_asks(stack: Stack) -> None:
    # As Centrifugo: `positioned: true` in the result where the request asked for it and the
    # namespace lets the client read history; every subscription of a namespace with recovery is.
    alice = await connected_client(gw(stack), "alice")
    asked = (await alice.command("subscribe", {"channel": "log:a", "positioned": True}))["subscribe"]
    assert asked["positioned"] is True
    assert "recoverable" not in asked
    assert asked["epoch"]
    assert "positioned" not in (await alice.command("subscribe", {"channel": "log:b"}))["subscribe"]
    sealed = (await alice.command("subscribe", {"channel": "sealed:a", "positioned": True}))["subscribe"]
    assert "positioned" not in sealed
    recovering = (await alice.command("subscribe", {"channel": "room:p"}))["subscribe"]
    assert recovering["positioned"] is True
    assert recovering["recoverable"] is True


async def test_the_epoch_goes_with_a_channel_s_first_publication_only(stack: Stack) -> None:
    # As Centrifugo, which sends it with offset 1: in its push, a history page, a recovery.
    alice = await connected_client(gw(stack), "alice")
    bob = await connected_client(gw(stack), "bob")
    sub = (await bob.command("subscribe", {"channel": "room:ep"}))["subscribe"]
    epoch = sub["epoch"]
    await publish_n(alice, "room:ep", 0, 3)
    pushes = await next_pubs(bob, 3)
    assert [p.get("epoch") for p in pushes] == [epoch, None, None]
    page = (await alice.command("history", {"channel": "room:ep", "limit": 10}))["history"]
    assert [p.get("epoch") for p in page["publications"]] == [epoch, None, None]
    newest = (await alice.command("history", {"channel": "room:ep", "limit": 10, "reverse": True}))["history"]
    assert [p.get("epoch") for p in newest["publications"]] == [None, None, epoch]
    since = {"offset": pushes[0]["offset"], "epoch": epoch}
    later = (await alice.command("history", {"channel": "room:ep", "limit": 10, "since": since}))["history"]
    assert [p.get("epoch") for p in later["publications"]] == [None, None]
    # Recovering from the position of an empty channel, and from a publication of it.
    carol = await connected_client(gw(stack), "carol")
    position = {"channel": "room:ep", "recover": True, "epoch": epoch, "offset": sub.get("offset", 0)}
    recovered = (await carol.command("subscribe", position))["subscribe"]
    assert [p.get("epoch") for p in recovered["publications"]] == [epoch, None, None]
    dave = await connected_client(gw(stack), "dave")
    position["offset"] = pushes[0]["offset"]
    recovered = (await dave.command("subscribe", position))["subscribe"]
    assert [p.get("epoch") for p in recovered["publications"]] == [None, None]


async def test_a_channel_whose_first_publication_was_trimmed_shows_no_epoch(stack: Stack) -> None:
    alice = await connected_client(gw(stack), "alice")
    await publish_n(alice, "tiny:ep", 0, 4)
    page = (await alice.command("history", {"channel": "tiny:ep", "limit": -1}))["history"]
    assert [p["data"]["n"] for p in page["publications"]] == [1, 2, 3]
    assert all("epoch" not in p for p in page["publications"])


async def test_reconnect_recovers_every_missed_publication_in_order(stack: Stack) -> None:
    bob = await connected_client(gw(stack), "bob")
    alice = await connected_client(gw(stack), "alice")
    sub = (await bob.command("subscribe", {"channel": "room:r"}))["subscribe"]
    await publish_n(alice, "room:r", 0, 1)
    [first] = await next_pubs(bob, 1)
    await bob.ws.close()

    await publish_n(alice, "room:r", 1, 50)

    again = await connected_client(gw(stack), "bob")
    result = (
        await again.command(
            "subscribe", {"channel": "room:r", "recover": True, "epoch": sub["epoch"], "offset": first["offset"]}
        )
    )["subscribe"]
    assert result["recovered"] is True
    assert result["was_recovering"] is True
    assert [p["data"]["n"] for p in result["publications"]] == list(range(1, 51))
    # As Centrifugo: the offset the client sent; it moves on with each recovered publication.
    assert result["offset"] == first["offset"]
    await publish_n(alice, "room:r", 51, 1)
    [live] = await next_pubs(again, 1)
    assert live["data"] == {"n": 51}
    assert live["offset"] > result["publications"][-1]["offset"]


async def test_trimmed_by_size_is_not_recovered_and_gives_no_partial_set(stack: Stack) -> None:
    alice = await connected_client(gw(stack), "alice")
    bob = await connected_client(gw(stack), "bob")
    sub = (await bob.command("subscribe", {"channel": "tiny:x"}))["subscribe"]
    await publish_n(alice, "tiny:x", 0, 1)
    [first] = await next_pubs(bob, 1)
    await publish_n(alice, "tiny:x", 1, 5)
    again = await connected_client(gw(stack), "bob")
    result = (
        await again.command(
            "subscribe", {"channel": "tiny:x", "recover": True, "epoch": sub["epoch"], "offset": first["offset"]}
        )
    )["subscribe"]
    assert result.get("recovered", False) is False
    assert "publications" not in result
    assert result["offset"] > first["offset"]


async def test_trimmed_by_age_is_not_recovered(stack: Stack) -> None:
    alice = await connected_client(gw(stack), "alice")
    bob = await connected_client(gw(stack), "bob")
    sub = (await bob.command("subscribe", {"channel": "brief:x"}))["subscribe"]
    await publish_n(alice, "brief:x", 0, 1)
    [first] = await next_pubs(bob, 1)
    await publish_n(alice, "brief:x", 1, 2)

    async def expired() -> bool:  # history_ttl is 1 s
        reply = await alice.command("history", {"channel": "brief:x", "limit": -1})
        return not reply["history"].get("publications")

    await wait_until_async(expired, 10, "the publications to age out", every=0.2)
    again = await connected_client(gw(stack), "bob")
    result = (
        await again.command(
            "subscribe", {"channel": "brief:x", "recover": True, "epoch": sub["epoch"], "offset": first["offset"]}
        )
    )["subscribe"]
    assert result.get("recovered", False) is False
    assert "publications" not in result


async def test_too_many_missed_is_not_recovered(stack: Stack) -> None:
    alice = await connected_client(gw(stack), "alice")
    bob = await connected_client(gw(stack), "bob")
    sub = (await bob.command("subscribe", {"channel": "room:many"}))["subscribe"]
    await publish_n(alice, "room:many", 0, 61)  # recovery_max_publications is 60
    again = await connected_client(gw(stack), "bob")
    position = {"channel": "room:many", "recover": True, "epoch": sub["epoch"], "offset": sub.get("offset", 0)}
    result = (await again.command("subscribe", position))["subscribe"]
    assert result.get("recovered", False) is False
    # An SDK that asks for it (flag bit 2) gets error 112 instead.
    third = await connected_client(gw(stack), "bob")
    reply = await third.command("subscribe", {**position, "flag": 2})
    assert reply["error"]["code"] == 112


async def test_recreated_stream_is_a_new_epoch_and_not_recovered(stack: Stack) -> None:
    alice = await connected_client(gw(stack), "alice")
    bob = await connected_client(gw(stack), "bob")
    sub = (await bob.command("subscribe", {"channel": "room:re"}))["subscribe"]
    await publish_n(alice, "room:re", 0, 2)
    await next_pubs(bob, 2)
    await bob.ws.close()
    await stack.stop_history()
    nc = await connect(stack.nats_url, name="admin")
    await nc.jetstream().delete_stream(Subjects().stream_name("room"))
    await nc.close()
    await stack.start_history()
    await publish_n(alice, "room:re", 2, 1)
    again = await connected_client(gw(stack), "bob")
    result = (
        await again.command(
            "subscribe", {"channel": "room:re", "recover": True, "epoch": sub["epoch"], "offset": sub.get("offset", 0)}
        )
    )["subscribe"]
    assert result.get("recovered", False) is False
    assert result["epoch"] != sub["epoch"]


async def test_history_pages_since_reverse_and_position(stack: Stack) -> None:
    alice = await connected_client(gw(stack), "alice")
    await publish_n(alice, "room:h", 0, 7)
    full = (await alice.command("history", {"channel": "room:h", "limit": -1}))["history"]
    assert [p["data"]["n"] for p in full["publications"]] == list(range(7))
    top = (await alice.command("history", {"channel": "room:h", "limit": 0}))["history"]
    assert top["publications"] == []  # written even when empty, as Centrifugo does
    assert top["offset"] == full["publications"][-1]["offset"] == full["offset"]
    newest = (await alice.command("history", {"channel": "room:h", "limit": 2, "reverse": True}))["history"]
    assert [p["data"]["n"] for p in newest["publications"]] == [6, 5]

    pages: list[int] = []
    since = None
    while True:
        body: dict[str, Any] = {"channel": "room:h", "limit": 3}
        if since is not None:
            body["since"] = since
        page = (await alice.command("history", body))["history"]
        pubs = page.get("publications", [])
        if not pubs:
            break
        pages.extend(p["data"]["n"] for p in pubs)
        since = {"offset": pubs[-1]["offset"], "epoch": page["epoch"]}
    assert pages == list(range(7))

    stale = await alice.command("history", {"channel": "room:h", "limit": 3, "since": {"offset": 1, "epoch": "nope"}})
    assert stale["error"]["code"] == 112
    assert (await alice.command("history", {"channel": "live:x", "limit": 3}))["error"]["code"] == 108


async def test_publications_racing_a_recovering_subscribe_arrive_once_in_order(stack: Stack) -> None:
    alice = await connected_client(gw(stack), "alice")
    bob = await connected_client(gw(stack), "bob")
    sub = (await bob.command("subscribe", {"channel": "room:race"}))["subscribe"]
    await publish_n(alice, "room:race", 0, 10)
    await bob.ws.close()

    first_acked = asyncio.Event()

    async def keep_publishing() -> None:
        await publish_n(alice, "room:race", 10, 1)
        first_acked.set()
        await publish_n(alice, "room:race", 11, 39)

    publisher = asyncio.create_task(keep_publishing())
    # The recovering subscribe starts while publications go on (one acked, 39 to come).
    await within(first_acked.wait())
    again = await connected_client(gw(stack), "bob")
    result = (
        await again.command(
            "subscribe",
            {"channel": "room:race", "recover": True, "epoch": sub["epoch"], "offset": sub.get("offset", 0)},
        )
    )["subscribe"]
    assert result["recovered"] is True
    seen = [p["data"]["n"] for p in result.get("publications", [])]
    await within(publisher)
    seen += [p["data"]["n"] for p in await next_pubs(again, 50 - len(seen))]
    assert seen == list(range(50))


async def test_subscribe_without_history_service_is_a_temporary_error(stack: Stack) -> None:
    await stack.stop_history()
    bob = await connected_client(gw(stack), "bob")
    reply = await bob.command("subscribe", {"channel": "room:down"})
    assert reply["error"]["code"] == 100
    assert reply["error"]["temporary"] is True
    ctx = gw(stack)._ctx
    assert ctx is not None
    await wait_until_async(lambda: ctx.hub.channel_count() == 0, what="joiner released")


async def test_config_change_applies_on_restart_and_keeps_retained_data(stack: Stack) -> None:
    alice = await connected_client(gw(stack), "alice")
    await publish_n(alice, "room:cfg", 0, 5)
    await stack.stop_history()
    await stack.start_history(NAMESPACES.replace("history_size: 100", "history_size: 200"))
    nc = await connect(stack.nats_url, name="admin")
    info = await nc.jetstream().stream_info(Subjects().stream_name("room"))
    await nc.close()
    assert info.config.max_msgs_per_subject == 200
    reply = (await alice.command("history", {"channel": "room:cfg", "limit": -1}))["history"]
    assert [p["data"]["n"] for p in reply["publications"]] == list(range(5))


async def test_publish_with_the_same_idempotency_key_is_stored_once(stack: Stack) -> None:
    from meshcast.bus import publish

    nc = await connect(stack.nats_url, name="backend")
    first = await publish(nc, "room:idem", b'{"n":1}', history=True, idempotency_key="once")
    again = await publish(nc, "room:idem", b'{"n":1}', history=True, idempotency_key="once")
    other = await publish(nc, "room:idem", b'{"n":2}', history=True, idempotency_key="twice")
    await nc.close()
    assert first == again
    assert other > first
    alice = await connected_client(gw(stack), "alice")
    reply = (await alice.command("history", {"channel": "room:idem", "limit": -1}))["history"]
    assert [p["data"] for p in reply["publications"]] == [{"n": 1}, {"n": 2}]


async def remove_history(stack: Stack, channel: str) -> None:
    """The history service's remove request, as a backend (or the server API) sends it."""
    nc = await connect(stack.nats_url, name="backend")
    try:
        msg = await nc.request(
            Subjects().history_api("remove"), RemoveRequest(channel=channel).SerializeToString(), timeout=timeout(5)
        )
    finally:
        await nc.close()
    reply = RemoveReply()
    reply.ParseFromString(msg.data)
    assert not reply.HasField("error"), reply.error


async def recover_from(stack: Stack, channel: str, epoch: str, offset: int, flag: int = 0) -> dict[str, Any]:
    client = await connected_client(gw(stack), "bob")
    body: dict[str, Any] = {"channel": channel, "recover": True, "epoch": epoch, "offset": offset}
    if flag:
        body["flag"] = flag
    return await client.command("subscribe", body)


async def subscribed_at_fifth(stack: Stack, alice: JsonClient, channel: str) -> tuple[str, int]:
    """Bob subscribes, 5 publications reach him, he goes away: his (epoch, offset).

    Another channel of the namespace keeps the stream's first sequence before
    them, as in any busy namespace (so the stream's head says nothing)."""
    await publish_n(alice, channel.replace(":", ":neighbour-of-"), 0, 1)
    bob = await connected_client(gw(stack), "bob")
    sub = (await bob.command("subscribe", {"channel": channel}))["subscribe"]
    await publish_n(alice, channel, 0, 5)
    pubs = await next_pubs(bob, 5)
    await bob.ws.close()
    return sub["epoch"], pubs[-1]["offset"]


@pytest.mark.parametrize("after_removal", [2, 0], ids=["published-after", "nothing-after"])
async def test_history_removed_after_the_offset_is_not_recovered(stack: Stack, after_removal: int) -> None:
    alice = await connected_client(gw(stack), "alice")
    channel = f"room:removed{after_removal}"
    epoch, offset = await subscribed_at_fifth(stack, alice, channel)
    await publish_n(alice, channel, 5, 3)
    await remove_history(stack, channel)
    await publish_n(alice, channel, 8, after_removal)

    result = (await recover_from(stack, channel, epoch, offset))["subscribe"]
    assert result.get("recovered", False) is False, result
    assert "publications" not in result, "no partial set"
    assert (await recover_from(stack, channel, epoch, offset, flag=2))["error"]["code"] == 112
    since = {"offset": offset, "epoch": epoch}
    assert (await alice.command("history", {"channel": channel, "limit": 10, "since": since}))["error"]["code"] == 112
    # What was published after the removal is history, and its position recovers.
    kept = (await alice.command("history", {"channel": channel, "limit": -1}))["history"]
    assert [p["data"]["n"] for p in kept.get("publications", [])] == list(range(8, 8 + after_removal))
    again = (await recover_from(stack, channel, epoch, result["offset"]))["subscribe"]
    assert again["recovered"] is True, again


async def test_a_removal_forgets_nothing_published_after_it(stack: Stack) -> None:
    alice = await connected_client(gw(stack), "alice")
    epoch, _ = await subscribed_at_fifth(stack, alice, "room:after")
    await remove_history(stack, "room:after")
    await publish_n(alice, "room:after", 5, 1)
    [first] = (await alice.command("history", {"channel": "room:after", "limit": -1}))["history"]["publications"]
    await publish_n(alice, "room:after", 6, 2)
    result = (await recover_from(stack, "room:after", epoch, first["offset"]))["subscribe"]
    assert result["recovered"] is True
    assert [p["data"]["n"] for p in result["publications"]] == [6, 7]


@pytest.mark.parametrize("ahead", [1000, 2**63, 2**64 - 1], ids=["plus-1000", "2^63", "2^64-1"])
async def test_an_offset_from_the_future_is_not_recovered(stack: Stack, ahead: int) -> None:
    alice = await connected_client(gw(stack), "alice")
    channel = f"room:future{ahead % 997}"
    epoch, offset = await subscribed_at_fifth(stack, alice, channel)
    future = min(offset + ahead, 2**64 - 1)

    result = (await recover_from(stack, channel, epoch, future))["subscribe"]
    assert result.get("recovered", False) is False, result
    assert result["offset"] == offset, "the real position, not the client's"
    assert (await recover_from(stack, channel, epoch, future, flag=2))["error"]["code"] == 112
    since = {"offset": future, "epoch": epoch}
    for reverse in (False, True):
        body = {"channel": channel, "limit": 10, "since": since, "reverse": reverse}
        assert (await alice.command("history", body))["error"]["code"] == 112

    # From the real position it returned, nothing published since is lost.
    await publish_n(alice, channel, 5, 3)
    again = (await recover_from(stack, channel, epoch, result["offset"]))["subscribe"]
    assert again["recovered"] is True
    assert [p["data"]["n"] for p in again["publications"]] == [5, 6, 7]


async def test_a_stream_made_before_removal_markers_is_migrated_with_its_data(nats_url: str, tmp_path: Path) -> None:
    subjects = Subjects()
    channels = ChannelsConfig(namespaces=[Namespace(name="room", history_size=10, history_ttl=60)])
    [spec] = stream_specs(channels, subjects, replicas=1, storage="memory", duplicate_window=60)
    nc = await connect(nats_url, name="admin")
    try:
        js = nc.jetstream(timeout=timeout(5))
        # As the history service made it before markers: its input subjects only.
        await js.add_stream(spec.config.evolve(subjects=[subjects.input_wildcard("room")]))
        ack = await js.publish(subjects.input("room:old"), b"kept")
        await ensure_streams(js, [spec])
        info = await js.stream_info(spec.config.name or "")
        assert info.config.subjects == [subjects.input_wildcard("room"), subjects.removal_wildcard("room")]
        assert info.state.last_seq == ack.seq
        assert (await js.get_msg(spec.config.name or "", ack.seq)).data == b"kept"
        # A marker is stored, and not republished to the channel's live subject.
        live = await nc.subscribe(subjects.live("room:old"))
        await nc.flush()
        marker = await js.publish(subjects.removal("room:old"), b"", stream=spec.config.name)
        assert marker.seq == ack.seq + 1
        with pytest.raises(TimeoutError):
            await live.next_msg(timeout=0.2)
    finally:
        await nc.close()


async def test_answers_too_large_for_one_nats_message_are_cut_or_not_recovered_never_a_timeout(
    stack: Stack, nats_url: str
) -> None:
    """Twenty 60 KB publications are more than NATS' 1 MiB message: `history` answers with
    what fits (oldest first; reversed, newest first) and a recovery over all of them is
    `recovered: false` at once, instead of error 100 after a timeout."""
    backend = await connect(nats_url, name="backend")
    channel = "room:big"
    bob = await connected_client(gw(stack), "bob")
    start = (await bob.command("subscribe", {"channel": channel}))["subscribe"]
    epoch, position = start["epoch"], start.get("offset", 0)
    await bob.command("unsubscribe", {"channel": channel})
    try:
        for n in range(20):
            await publish(backend, channel, json.dumps({"n": n, "pad": "x" * 60_000}).encode(), history=True)
    finally:
        await backend.close()

    forward = (await within(bob.command("history", {"channel": channel, "limit": -1}), 5))["history"]
    got = [p["data"]["n"] for p in forward["publications"]]
    assert 10 <= len(got) < 20
    assert got == list(range(len(got)))
    newest = (await within(bob.command("history", {"channel": channel, "limit": -1, "reverse": True}), 5))["history"]
    assert [p["data"]["n"] for p in newest["publications"]] == list(range(19, 19 - len(got), -1))

    body = {"channel": channel, "recover": True, "epoch": epoch, "offset": position}
    result = (await within(bob.command("subscribe", body), 5))["subscribe"]
    assert result.get("recovered", False) is False
    assert result.get("publications", []) == []
