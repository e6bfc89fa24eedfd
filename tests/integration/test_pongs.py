"""A client busy with a slow command still answers pings, and stays connected.

The connection task runs one command at a time; while it awaits a slow one
(an rpc to a slow backend, a subscribe riding through a JetStream election)
it reads no message. The client's pongs arrive all the same and must count:
the gateway closes with 3012 only a client that really stopped answering.
"""

from __future__ import annotations

import asyncio

import nats
from nats.aio.msg import Msg

from meshcast.bus import Subjects
from meshcast.proto.proxy_pb2 import RPCReply, RPCRequest
from meshcast.testing import timeout, within

from .harness import GatewayFactory, connected_client


async def test_pongs_during_a_slow_command_keep_the_connection(make_gateway: GatewayFactory, nats_url: str) -> None:
    ping, pong = timeout(0.3), timeout(0.6)
    slow = 4 * (ping + pong)
    gateway = await make_gateway(ping_interval=ping, pong_timeout=pong, proxy_timeout=slow + timeout(5))
    backend = await nats.connect(nats_url)

    async def answer_slowly(msg: Msg) -> None:
        request = RPCRequest()
        request.ParseFromString(msg.data)
        await asyncio.sleep(slow)
        reply = RPCReply()
        reply.result.data = request.data
        await msg.respond(reply.SerializeToString())

    await backend.subscribe(Subjects().rpc("slow"), cb=answer_slowly)
    await backend.flush()
    alice = await connected_client(gateway, "alice")
    try:
        await alice.send({"id": 7, "rpc": {"method": "slow", "data": {"n": 1}}})
        pings = 0
        while True:
            replies = await alice.recv(seconds=slow + timeout(5))
            if {} in replies:
                pings += 1
                await alice.ws.send("{}")
            answer = [r for r in replies if r.get("id") == 7]
            if answer:
                break
        assert answer[0]["rpc"]["data"] == {"n": 1}
        assert pings >= 3, "the gateway did not ping during the command: the test proved nothing"
        assert alice.ws.close_code is None
        # And afterwards a silent client is still closed with 3012.
        assert await within(alice.close_code(seconds=4 * (ping + pong)), 10) == 3012
    finally:
        await backend.close()
