"""The server API over gRPC, with stubs generated from the project's own
``centrifugo_api.proto`` (`centrifugal.centrifugo.api.CentrifugoApi`)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
import pytest

from meshcast.proto import centrifugo_api_pb2 as api
from meshcast.proto.centrifugo_api_pb2_grpc import CentrifugoApiStub
from meshcast.testing import timeout, within, ws_url

from .apistack import KEY, ApiStack, api_stack
from .sdk import Recorder, sdk_client

pytestmark = pytest.mark.e2e

__all__ = ["api_stack"]  # the module-scoped fixture, imported

AUTH = (("authorization", f"apikey {KEY}"),)


@pytest.fixture
async def stub(api_stack: ApiStack) -> AsyncIterator[CentrifugoApiStub]:
    async with grpc.aio.insecure_channel(api_stack.grpc_target) as channel:
        yield CentrifugoApiStub(channel)


async def test_publish_over_grpc_reaches_a_subscriber_and_history(api_stack: ApiStack, stub: CentrifugoApiStub) -> None:
    alice = sdk_client(ws_url(api_stack.gateways[0]), "alice")
    await within(alice.connect())
    try:
        recorder = Recorder()
        sub = alice.new_subscription("chat:grpc", events=recorder)
        await within(sub.subscribe())
        await within(sub.ready())
        request = api.PublishRequest(channel="chat:grpc", data=json.dumps({"via": "grpc"}).encode())
        reply = await stub.Publish(request, metadata=AUTH, timeout=timeout(10))
        assert not reply.HasField("error")
        assert reply.result.offset >= 1
        assert reply.result.epoch
        assert await recorder.next() == {"via": "grpc"}

        history = await stub.History(api.HistoryRequest(channel="chat:grpc", limit=-1), metadata=AUTH)
        assert [json.loads(p.data) for p in history.result.publications] == [{"via": "grpc"}]
        assert history.result.publications[0].offset == reply.result.offset
    finally:
        await within(alice.disconnect())


async def test_errors_ride_in_the_response_and_a_missing_key_is_unauthenticated(stub: CentrifugoApiStub) -> None:
    unknown = await stub.Publish(api.PublishRequest(channel="nope:x", data=b"{}"), metadata=AUTH)
    assert (unknown.error.code, unknown.HasField("result")) == (102, False)
    ok = await stub.Publish(api.PublishRequest(channel="lobby", data=b"{}"), metadata=AUTH)
    assert (ok.HasField("error"), ok.HasField("result")) == (False, True)
    no_history = await stub.History(api.HistoryRequest(channel="lobby"), metadata=AUTH)
    assert no_history.error.code == 108
    for metadata in ((), (("authorization", "apikey wrong"),)):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Info(api.InfoRequest(), metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_batch_and_info_over_grpc(stub: CentrifugoApiStub) -> None:
    commands = [
        api.Command(publish=api.PublishRequest(channel="lobby", data=b'{"n":1}')),
        api.Command(history=api.HistoryRequest(channel="lobby")),
        api.Command(presence_stats=api.PresenceStatsRequest(channel="chat:grpc")),
    ]
    batch = await stub.Batch(api.BatchRequest(commands=commands), metadata=AUTH)
    assert [r.ListFields()[0][0].name for r in batch.replies] == ["publish", "error", "presence_stats"]
    assert batch.replies[1].error.code == 108
    info = await stub.Info(api.InfoRequest(), metadata=AUTH)
    assert sorted(n.name for n in info.result.nodes if n.name.startswith("gateway")) == ["gateway-1", "gateway-2"]
