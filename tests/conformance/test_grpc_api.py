"""The server API over gRPC against Centrifugo's (``grpc_api.enabled``), with the stubs
Meshcast generates from ``proto/meshcast/proto/centrifugo_api.proto``: the same calls
against both, the answers (or gRPC statuses) compared like the client sessions'."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message

from meshcast.proto import centrifugo_api_pb2 as api
from meshcast.proto.centrifugo_api_pb2_grpc import CentrifugoApiStub
from meshcast.protocol import Format
from meshcast.testing import timeout

from .compare import diff
from .conftest import API_KEY, Pair
from .differential import verdict
from .runner import Record
from .script import Session
from .wire import message_dict

KEYED = (("authorization", f"apikey {API_KEY}"),)
SESSION = Session("grpc_api", (), (Format.PROTOBUF,), short=True, about="the same calls over gRPC")


@dataclass(frozen=True)
class Call:
    label: str
    method: str
    request: Message
    channel: str | None = None
    metadata: tuple[tuple[str, str], ...] = KEYED


def _calls(u: str) -> list[Call]:
    data = json.dumps({"n": 1}).encode()
    chat, lobby = f"chat:g{u}", f"lobby{u}"
    batch = [
        api.Command(publish=api.PublishRequest(channel=lobby, data=data)),
        api.Command(history=api.HistoryRequest(channel=lobby)),
        api.Command(publish=api.PublishRequest(channel=f"nope:x{u}", data=data)),
    ]
    return [
        Call("Info", "Info", api.InfoRequest()),
        Call("Publish", "Publish", api.PublishRequest(channel=chat, data=data), chat),
        Call("PublishNoHistory", "Publish", api.PublishRequest(channel=lobby, data=data), lobby),
        Call("PublishUnknown", "Publish", api.PublishRequest(channel=f"nope:x{u}", data=data)),
        Call("History", "History", api.HistoryRequest(channel=chat, limit=-1), chat),
        Call("HistoryReverse", "History", api.HistoryRequest(channel=chat, limit=1, reverse=True), chat),
        Call("HistoryNone", "History", api.HistoryRequest(channel=lobby), lobby),
        Call("PresenceStats", "PresenceStats", api.PresenceStatsRequest(channel=chat), chat),
        Call("Presence", "Presence", api.PresenceRequest(channel=chat), chat),
        Call("Channels", "Channels", api.ChannelsRequest(pattern=f"*{u}")),
        Call("Batch", "Batch", api.BatchRequest(commands=batch), lobby),
        Call("HistoryRemove", "HistoryRemove", api.HistoryRemoveRequest(channel=chat), chat),
        Call("NoKey", "Info", api.InfoRequest(), metadata=()),
        Call("WrongKey", "Info", api.InfoRequest(), metadata=(("authorization", "apikey wrong"),)),
    ]


async def _record(target: str, address: str, suffix: str) -> Record:
    record = Record(target, suffix)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = CentrifugoApiStub(channel)
        for call in _calls(suffix):
            value: Any
            try:
                response = await getattr(stub, call.method)(call.request, metadata=call.metadata, timeout=timeout(10))
                value = message_dict(response)
            except grpc.aio.AioRpcError as exc:
                value = {"grpc_status": exc.code().name}
            record.add(f"grpc:{call.label}", value, call.channel, f"{call.method}({call.request})")
    return record


async def test_grpc_calls_match_centrifugo(pair: Pair) -> None:
    suffix = "u" + secrets.token_hex(3)
    reference = await _record("centrifugo", pair.centrifugo_grpc, suffix)
    candidate = await _record("meshcast", pair.meshcast_grpc, suffix)
    report = verdict(SESSION, Format.PROTOBUF, diff(reference, candidate))
    assert report is None, report
