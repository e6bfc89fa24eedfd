"""A cookie session instead of a JWT: the unmodified SDK, a gateway process, a backend deciding over NATS."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from centrifuge import Client
from nats.aio.msg import Msg

from meshcast.bus import Subjects, connect
from meshcast.proto import proxy_pb2 as proxy
from meshcast.testing import NatsServer, ServiceProcess, gateway_process, within, ws_url

from .conftest import NAMESPACES, SECRET
from .sdk import Recorder

pytestmark = pytest.mark.e2e


@pytest.fixture
def proxied_gateway(nats_server: NatsServer, tmp_path: Path) -> Iterator[ServiceProcess]:
    gateway = gateway_process(
        tmp_path,
        [nats_server.url],
        secret=SECRET,
        namespaces_file=NAMESPACES,
        extra_env={"MESHCAST_PROXY_CONNECT": "true", "MESHCAST_PROXY_TIMEOUT": "2"},
    ).start()
    try:
        yield gateway
    finally:
        gateway.terminate()


async def test_sdk_connects_with_a_cookie_the_backend_accepts(
    proxied_gateway: ServiceProcess, nats_server: NatsServer
) -> None:
    nc = await connect(nats_server.url, name="backend")

    async def decide(msg: Msg) -> None:
        request = proxy.ConnectRequest.FromString(msg.data)
        reply = proxy.ConnectReply()
        if request.headers.get("Cookie") == "session=s3cr3t":
            reply.result.CopyFrom(
                proxy.ConnectResult(
                    user="carol", expire_at=int(time.time()) + 600, info=json.dumps({"name": "Carol"}).encode()
                )
            )
        else:
            reply.error.CopyFrom(proxy.ProxyError(code=101, message="unauthorized"))
        await msg.respond(reply.SerializeToString())

    await nc.subscribe(Subjects().proxy("connect"), queue="backend", cb=decide)
    await nc.flush()

    client = Client(ws_url(proxied_gateway), headers={"Cookie": "session=s3cr3t"})
    recorder = Recorder()
    await within(client.connect())
    sub = client.new_subscription("lobby", events=recorder)
    await sub.subscribe()
    await sub.ready(timeout=5)
    await client.publish("lobby", {"from": "cookie"})
    assert await recorder.next() == {"from": "cookie"}
    await client.disconnect()
    await nc.close()
