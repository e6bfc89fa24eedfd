"""The gateway's scatter-gather answers (``<p>.node.v1.*``): inboxes only, channels in parts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest

from meshcast.bus import Subjects
from meshcast.proto.node_pb2 import ChannelsReply, ChannelsRequest, NodeInfo
from meshcast.testing import NatsServer, gateway_process, timeout, within, ws_url

from .conftest import NAMESPACES, SECRET
from .sdk import sdk_client, subscribed

pytestmark = pytest.mark.e2e

SUBJECTS = Subjects()


async def test_a_gateway_answers_inboxes_only_and_counts_its_channels_and_publications(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    gateway = gateway_process(tmp_path, [nats_server.url], secret=SECRET, namespaces_file=NAMESPACES).start()
    nc = await nats.connect(nats_server.url)
    client = sdk_client(ws_url(gateway), "alice")
    try:
        await within(client.connect())
        recorder = await subscribed(client, "lobby")

        # A reply subject that is not an inbox (here a channel's live subject) gets nothing.
        forged = SUBJECTS.live("victim")
        seen = await nc.subscribe(forged)
        await nc.publish(SUBJECTS.node_api("info"), b"", reply=forged)
        await nc.publish(SUBJECTS.node_api("channels"), b"", reply=forged)
        with pytest.raises(asyncio.TimeoutError):
            await seen.next_msg(timeout=timeout(0.5))

        info = NodeInfo()
        info.ParseFromString((await nc.request(SUBJECTS.node_api("info"), b"", timeout=timeout(5))).data)
        assert (info.num_clients, info.num_users, info.num_subs) == (1, 1, 1)
        assert info.rss > 0
        assert (info.num_publications, info.num_deliveries) == (0, 0)

        # Its cumulative counts (the admin UI's messages/s): one publication in, one delivered.
        await within(client.publish("lobby", {"n": 1}))
        assert await recorder.next() == {"n": 1}
        info.ParseFromString((await nc.request(SUBJECTS.node_api("info"), b"", timeout=timeout(5))).data)
        assert (info.num_publications, info.num_deliveries) == (1, 1)

        reply = ChannelsReply()
        request = ChannelsRequest(pattern="lob*").SerializeToString()
        reply.ParseFromString((await nc.request(SUBJECTS.node_api("channels"), request, timeout=timeout(5))).data)
        assert [(c.channel, c.num_clients) for c in reply.channels] == [("lobby", 1)]
        assert (reply.node, reply.more) == (info.uid, False)
        request = ChannelsRequest(pattern="chat:*").SerializeToString()
        reply.ParseFromString((await nc.request(SUBJECTS.node_api("channels"), request, timeout=timeout(5))).data)
        assert list(reply.channels) == []
    finally:
        await within(client.disconnect())
        await nc.close()
        gateway.terminate()
