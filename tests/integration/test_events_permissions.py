"""Who may do what with the events stream MESHCAST_EVENTS (meshcast.common.natsauth), on a real server.

The events service owns it (creates, updates, may purge it); nobody deletes it;
a backend reads it with consumers of its own; gateways publish only their own
events, presence only gateway expiries. See test_nats_permissions for the rest
of the users' model, whose fixtures these tests share.
"""

from __future__ import annotations

import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from meshcast.bus import Subjects
from meshcast.bus.subjects import EVENTS_LEDGER_BUCKET
from meshcast.common.natsauth import BACKEND, EVENTS, GATEWAY, HISTORY, PRESENCE, inbox_prefix
from meshcast.events.app import EventsApp
from meshcast.events.checkpoint import Checkpoints
from meshcast.events.settings import EventsSettings
from meshcast.events.stream import ensure_stream, stream_config
from meshcast.proto.events_ledger_pb2 import LedgerState
from meshcast.proto.events_pb2 import Connect, Event
from meshcast.testing import NatsServer, wait_until_async

from . import test_nats_permissions as users
from .test_nats_permissions import JS_TIMEOUT, Peer, PeerFactory

# That module's fixtures: a server with every user's authorization, a connection per user.
passwords, secured, peer = users.passwords, users.secured, users.peer

SUBJECTS = Subjects()
STREAM = SUBJECTS.events_stream


async def _events_stream(events: Peer) -> None:
    """The stream as the events service makes it (twice: a restart updates it in place)."""
    js = events.nc.jetstream(timeout=JS_TIMEOUT)
    config = stream_config(SUBJECTS, EventsSettings(events_storage="memory"))
    await ensure_stream(js, config)
    await ensure_stream(js, config)


def _connect(client: str) -> bytes:
    return Event(gateway="g", source=Event.GATEWAY, connect=Connect(client=client)).SerializeToString()


async def test_the_events_service_owns_its_stream_and_its_ledger_bucket(peer: PeerFactory) -> None:
    events = await peer(EVENTS)
    await _events_stream(events)
    js = events.nc.jetstream(timeout=JS_TIMEOUT)
    info = await js.stream_info(STREAM)
    assert info.config.subjects == [SUBJECTS.events_wildcard()]
    assert info.config.deny_delete
    ack = await js.publish(SUBJECTS.event("disconnect"), _connect("a"), headers={"Nats-Msg-Id": "disconnect:a"})
    assert ack.stream == STREAM
    await js.publish(SUBJECTS.event("channel_vacated", "room:x"), b"")
    await js.purge_stream(STREAM)

    # Its checkpoints, through its own code.
    kv = await js.create_key_value(bucket=EVENTS_LEDGER_BUCKET, ttl=3600, history=1)
    checkpoints = Checkpoints(kv, chunk=1024)
    state = LedgerState(seq=7, pending=[])
    state.connections.add(client="x" * 3000)
    assert await checkpoints.save(state)
    assert await checkpoints.save(state)  # its previous chunks go
    assert await checkpoints.load() == state
    assert not await checkpoints.save(LedgerState(seq=3))  # never back to an older one
    events.assert_no_violation()

    await events.refused(js.delete_stream(STREAM), f"$JS.API.STREAM.DELETE.{STREAM}")
    # It cannot pose as a gateway, nor touch the history streams.
    await events.refused(events.nc.publish(SUBJECTS.event("connect"), b""), SUBJECTS.event("connect"))
    await events.refused(js.stream_info("MESHCAST_HISTORY_chat"), "$JS.API.STREAM.INFO.MESHCAST_HISTORY_chat")


async def test_nobody_but_its_owner_changes_or_purges_the_stream_and_nobody_deletes_it(peer: PeerFactory) -> None:
    events = await peer(EVENTS)
    await _events_stream(events)
    config = (await events.nc.jetstream(timeout=JS_TIMEOUT).stream_info(STREAM)).config
    for user in (HISTORY, BACKEND, GATEWAY, PRESENCE):
        other = await peer(user)
        js = other.nc.jetstream(timeout=JS_TIMEOUT)
        await other.refused(js.purge_stream(STREAM), f"$JS.API.STREAM.PURGE.{STREAM}")
        await other.refused(js.delete_stream(STREAM), f"$JS.API.STREAM.DELETE.{STREAM}")
        await other.refused(js.update_stream(config.evolve(max_age=1)), f"$JS.API.STREAM.UPDATE.{STREAM}")
        await other.refused(js.delete_msg(STREAM, 1), f"$JS.API.STREAM.MSG.DELETE.{STREAM}")
    info = await events.nc.jetstream(timeout=JS_TIMEOUT).stream_info(STREAM)
    assert info.config.max_age == config.max_age


async def test_gateways_publish_their_own_events_and_presence_only_expiries(peer: PeerFactory) -> None:
    events, gateway, presence = await peer(EVENTS), await peer(GATEWAY), await peer(PRESENCE)
    await _events_stream(events)
    gjs = gateway.nc.jetstream(timeout=JS_TIMEOUT)
    for subject in (
        SUBJECTS.event("connect"),
        SUBJECTS.event("disconnect"),
        SUBJECTS.event("subscribe", "room:x"),
        SUBJECTS.event("unsubscribe", "room:x"),
        SUBJECTS.event("publication", "room:x"),
    ):
        assert (await gjs.publish(subject, _connect("c"))).stream == STREAM
    gateway.assert_no_violation()
    for subject in (
        SUBJECTS.event("channel_occupied", "room:x"),
        SUBJECTS.event("channel_vacated", "room:x"),
        SUBJECTS.event("gateway_expired"),
    ):
        await gateway.refused(gateway.nc.publish(subject, b""), subject)
    pjs = presence.nc.jetstream(timeout=JS_TIMEOUT)
    assert (await pjs.publish(SUBJECTS.event("gateway_expired"), b"")).stream == STREAM
    await presence.refused(presence.nc.publish(SUBJECTS.event("disconnect"), b""), SUBJECTS.event("disconnect"))


async def test_a_backend_reads_the_stream_with_a_durable_consumer_but_writes_nothing(peer: PeerFactory) -> None:
    events, gateway, backend = await peer(EVENTS), await peer(GATEWAY), await peer(BACKEND)
    await _events_stream(events)
    gjs = gateway.nc.jetstream(timeout=JS_TIMEOUT)
    for n in range(3):
        await gjs.publish(SUBJECTS.event("connect"), _connect(f"c{n}"))
    js = backend.nc.jetstream(timeout=JS_TIMEOUT)
    config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT)
    sub = await js.pull_subscribe(SUBJECTS.events_wildcard(), durable="billing", stream=STREAM, config=config)
    [first, second] = await sub.fetch(2, timeout=JS_TIMEOUT)
    await first.ack_sync()
    await second.ack_sync()
    await sub.unsubscribe()
    # Back later: the durable consumer carries on where it acked.
    again = await js.pull_subscribe(SUBJECTS.events_wildcard(), durable="billing", stream=STREAM, config=config)
    [third] = await again.fetch(1, timeout=JS_TIMEOUT)
    assert Event.FromString(third.data).connect.client == "c2"
    await third.ack_sync()
    assert (await js.stream_info(STREAM)).state.messages == 3
    assert (await js.get_msg(STREAM, 1)).data == _connect("c0")
    # A live view of the subjects, too.
    await backend.nc.subscribe(SUBJECTS.events_wildcard())
    backend.assert_no_violation()
    await js.delete_consumer(STREAM, "billing")

    # It can neither forge an event nor touch another stream or bucket.
    await backend.refused(backend.nc.publish(SUBJECTS.event("disconnect"), b""), SUBJECTS.event("disconnect"))
    await backend.refused(
        js.pull_subscribe("x", durable="d", stream=f"KV_{EVENTS_LEDGER_BUCKET}"),
        f"$JS.API.CONSUMER.INFO.KV_{EVENTS_LEDGER_BUCKET}.d",
    )


async def test_the_events_service_runs_as_its_own_user(
    peer: PeerFactory,
    secured: NatsServer,
    passwords: dict[str, str],
) -> None:
    """Its own code, start to stop, within its permissions."""
    settings = EventsSettings(
        nats_url=secured.url_for(EVENTS, passwords[EVENTS]),
        nats_inbox_prefix=inbox_prefix(EVENTS),
        events_storage="memory",
        health_port=0,
        health_host="127.0.0.1",
    )
    app = EventsApp(settings)
    await app.start()
    try:
        assert app.ready()
        gateway = await peer(GATEWAY)
        await gateway.nc.jetstream(timeout=JS_TIMEOUT).publish(SUBJECTS.event("connect"), _connect("x"))
        await wait_until_async(lambda: app.ledger.open_clients() == ["x"], what="the ledger to hold x")
    finally:
        await app.stop()
    assert not [line for line in secured.log_path.read_text().splitlines() if "Permissions Violation" in line]


@pytest.mark.parametrize("user", [HISTORY, BACKEND, GATEWAY])
async def test_only_the_events_service_writes_its_ledger(peer: PeerFactory, user: str) -> None:
    other = await peer(user)
    subject = f"$KV.{EVENTS_LEDGER_BUCKET}.head"
    await other.refused(other.nc.publish(subject, b""), subject)
