"""Every responder answers inboxes only: a hostile reply subject is no confused deputy.

A responder publishes its answer with its own NATS permissions, and
``allow_responses`` lets it reach any reply subject whatever its deny list
(checked against a real nats-server). So a requester that names
``$JS.API.STREAM.DELETE.<stream>`` as the reply of a presence query (whose
empty stats answer is a valid, empty API request) would have the presence
service delete any stream. Each responder here (presence query and resume
heartbeat, a gateway's snapshot, the history API) gets hostile reply subjects;
the victim stream and KV bucket must survive, and honest requests still work.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as Nats

from meshcast.bus import Subjects
from meshcast.bus.requests import is_inbox
from meshcast.gateway.app import Gateway
from meshcast.proto.history_pb2 import PositionReply, PositionRequest
from meshcast.proto.presence_pb2 import GatewayHeartbeat, QueryReply, QueryRequest, SyncRequest
from meshcast.testing import timeout

from .harness import GatewayFactory, HistoryFactory, PresenceFactory

NAMESPACES = """
namespaces:
  - name: room
    presence: true
    history_size: 10
    history_ttl: 60
    allow_publish: true
"""
SUBJECTS = Subjects()
HOSTILE = (
    "$JS.API.STREAM.DELETE.VICTIM",
    "$JS.API.STREAM.PURGE.VICTIM",
    "$KV.victim.key",
    "meshcast.control",
    "_INBOX.x.*",
    "_INBOX.>",
)


@pytest.fixture
async def services(
    nats_url: str, make_history: HistoryFactory, make_presence: PresenceFactory, make_gateway: GatewayFactory
) -> AsyncIterator[tuple[Gateway, Nats]]:
    await make_history(NAMESPACES)
    await make_presence(startup_sync_wait=timeout(0.1))
    gateway = await make_gateway(NAMESPACES)
    attacker = await nats.connect(nats_url)
    try:
        yield gateway, attacker
    finally:
        await attacker.close()


def test_only_inboxes_are_reply_subjects() -> None:
    assert is_inbox("_INBOX.abc.1")
    assert is_inbox("_INBOX_gateway.Zx9.12")
    for reply in (*HOSTILE, "", "_INBOX", "_INBOX_gateway", "_INBOX. x", "_INBOX." + "a" * 300):
        assert not is_inbox(reply), reply


async def test_hostile_reply_subjects_reach_nothing_and_honest_requests_still_work(
    services: tuple[Gateway, Nats],
) -> None:
    gateway, attacker = services
    js = attacker.jetstream(timeout=timeout(5))
    await js.add_stream(name="VICTIM", subjects=["victim.>"])
    await js.publish("victim.a", b"keep me")
    kv = await js.create_key_value(bucket="victim")
    await kv.put("key", b"keep me")

    requests = [
        (SUBJECTS.presence_query, QueryRequest(channel="room:x", stats_only=True).SerializeToString()),
        (SUBJECTS.presence_heartbeat, GatewayHeartbeat(gateway="mallory", epoch=1).SerializeToString()),
        (SUBJECTS.presence_sync(), SyncRequest(max_members=10).SerializeToString()),
        (SUBJECTS.history_api("position"), PositionRequest(channel="room:x").SerializeToString()),
    ]
    for subject, body in requests:
        for reply in HOSTILE:
            await attacker.publish(subject, body, reply=reply)
    await attacker.flush()
    # Answers would have come by now; check nothing was touched.
    await asyncio.sleep(0.5)
    info = await js.stream_info("VICTIM")
    assert info.state.messages == 1
    assert (await kv.get("key")).value == b"keep me"

    # Honest requesters (an inbox as the reply) are still answered.
    stats = QueryReply()
    stats.ParseFromString((await attacker.request(SUBJECTS.presence_query, requests[0][1], timeout=timeout(5))).data)
    assert stats.num_clients == 0
    position = PositionReply()
    position.ParseFromString((await attacker.request(requests[3][0], requests[3][1], timeout=timeout(5))).data)
    assert position.epoch
    assert gateway.ready()
