"""The Sans-I/O session: every command, every error path, both formats."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from meshcast.proto.client_pb2 import Command, ConnectRequest, PublishRequest, Reply, SubscribeRequest, SubscribeResult
from meshcast.protocol import (
    CloseRequired,
    CommandReceived,
    DisconnectCode,
    ErrorCode,
    Format,
    PongReceived,
    ReplyError,
    ServerSession,
    State,
)
from meshcast.protocol.codec import encode_varint

ALL_METHODS = [
    ("connect", {"token": "t"}),
    ("subscribe", {"channel": "a"}),
    ("unsubscribe", {"channel": "a"}),
    ("publish", {"channel": "a", "data": {"x": 1}}),
    ("presence", {"channel": "a"}),
    ("presence_stats", {"channel": "a"}),
    ("history", {"channel": "a", "limit": 10}),
    ("ping", {}),
    ("send", {"data": {"x": 1}}),
    ("rpc", {"method": "m", "data": {"x": 1}}),
    ("refresh", {"token": "t"}),
    ("sub_refresh", {"channel": "a", "token": "t"}),
]


def connected(fmt: Format = Format.JSON) -> ServerSession:
    session = ServerSession(fmt)
    session.connected()
    return session


def pb_frame(*commands: Command) -> bytes:
    return b"".join(encode_varint(len(c.SerializeToString())) + c.SerializeToString() for c in commands)


def close_code(events: Sequence[object]) -> int:
    assert len(events) >= 1
    last = events[-1]
    assert isinstance(last, CloseRequired)
    return last.disconnect.code


def test_connect_is_decoded_with_raw_json_data() -> None:
    session = ServerSession(Format.JSON)
    events = list(
        session.receive(json.dumps({"id": 1, "connect": {"token": "abc", "data": {"k": [1, 2]}, "name": "js"}}))
    )
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, CommandReceived)
    assert event.method == "connect"
    assert isinstance(event.request, ConnectRequest)
    assert event.request.token == "abc"
    assert json.loads(event.request.data) == {"k": [1, 2]}


@pytest.mark.parametrize(("method", "body"), [m for m in ALL_METHODS if m[0] != "connect"])
def test_every_method_is_recognised_after_connect(method: str, body: dict[str, object]) -> None:
    session = connected()
    cmd_id = 0 if method == "send" else 7
    events = list(session.receive(json.dumps({"id": cmd_id, method: body})))
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, CommandReceived)
    assert event.method == method
    assert event.id == cmd_id


@pytest.mark.parametrize(("method", "body"), [m for m in ALL_METHODS if m[0] != "connect"])
def test_every_method_is_recognised_in_protobuf(method: str, body: dict[str, object]) -> None:
    session = connected(Format.PROTOBUF)
    command = Command(id=3)
    getattr(command, method).SetInParent()
    if "channel" in body:
        getattr(command, method).channel = "a"
    events = list(session.receive(pb_frame(command)))
    assert isinstance(events[0], CommandReceived)
    assert events[0].method == method


def test_publish_data_keeps_its_json_value() -> None:
    session = connected()
    [event] = list(session.receive('{"id":2,"publish":{"channel":"chat:a","data":{"text":"hé","n":1.5}}}'))
    assert isinstance(event, CommandReceived)
    assert isinstance(event.request, PublishRequest)
    assert json.loads(event.request.data) == {"text": "hé", "n": 1.5}


def test_several_commands_in_one_json_frame() -> None:
    session = connected()
    frame = '{"id":1,"subscribe":{"channel":"a"}}\n{"id":2,"subscribe":{"channel":"b"}}\n'
    events = list(session.receive(frame))
    assert [e.request.channel for e in events if isinstance(e, CommandReceived)] == ["a", "b"]  # type: ignore[attr-defined]


def test_several_commands_in_one_protobuf_frame() -> None:
    session = connected(Format.PROTOBUF)
    frame = pb_frame(
        Command(id=1, subscribe=SubscribeRequest(channel="a")), Command(id=2, subscribe=SubscribeRequest(channel="b"))
    )
    events = list(session.receive(frame))
    assert [e.id for e in events if isinstance(e, CommandReceived)] == [1, 2]


def test_empty_command_after_a_ping_is_its_pong() -> None:
    for fmt, pong in ((Format.JSON, "{}"), (Format.PROTOBUF, encode_varint(0))):
        session = connected(fmt)
        session.pinged()
        session.pinged()
        assert list(session.receive(pong)) == [PongReceived()]
        assert list(session.receive(pong)) == [PongReceived()]
        assert session.state is State.CONNECTED


def test_pong_without_a_ping_is_a_bad_request() -> None:
    # Centrifugo: "unnecessary pong" closes with 3501; one pong answers one ping.
    assert close_code(session_events("{}")) == DisconnectCode.BAD_REQUEST
    assert close_code(list(ServerSession(Format.JSON).receive("{}"))) == DisconnectCode.BAD_REQUEST
    session = connected(Format.PROTOBUF)
    session.pinged()
    assert list(session.receive(encode_varint(0))) == [PongReceived()]
    assert close_code(list(session.receive(encode_varint(0)))) == DisconnectCode.BAD_REQUEST


def session_events(frame: str) -> list[object]:
    return list(connected().receive(frame))


@pytest.mark.parametrize(
    "frame",
    [
        "{not json",
        "[1,2]",
        '"text"',
        '{"id":"x","connect":{}}',
        '{"id":1,"subscribe":{"channel":5}}',
        '{"id":1,"publish":{"channel":"a","data":NaN}}',
    ],
)
def test_bad_json_is_a_bad_request_disconnect(frame: str) -> None:
    session = connected()
    assert close_code(list(session.receive(frame))) == DisconnectCode.BAD_REQUEST
    assert session.state is State.CLOSED
    assert list(session.receive('{"id":9,"ping":{}}')) == []


def test_invalid_utf8_is_a_bad_request() -> None:
    assert close_code(list(connected().receive(b"\xff\xfe"))) == DisconnectCode.BAD_REQUEST


@pytest.mark.parametrize("frame", [b"\x05\x08", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", b"\x03\xff\xff\xff"])
def test_bad_protobuf_is_a_bad_request_disconnect(frame: bytes) -> None:
    assert close_code(list(connected(Format.PROTOBUF).receive(frame))) == DisconnectCode.BAD_REQUEST


def test_text_frame_on_protobuf_connection_is_a_bad_request() -> None:
    assert close_code(list(connected(Format.PROTOBUF).receive("{}"))) == DisconnectCode.BAD_REQUEST


def test_command_before_connect_is_a_bad_request() -> None:
    session = ServerSession(Format.JSON)
    assert close_code(list(session.receive('{"id":1,"subscribe":{"channel":"a"}}'))) == DisconnectCode.BAD_REQUEST


def test_second_connect_is_a_bad_request() -> None:
    assert close_code(list(connected().receive('{"id":1,"connect":{}}'))) == DisconnectCode.BAD_REQUEST


def test_command_without_id_is_a_bad_request() -> None:
    assert close_code(list(connected().receive('{"subscribe":{"channel":"a"}}'))) == DisconnectCode.BAD_REQUEST


@pytest.mark.parametrize("method", ["subscribe", "unsubscribe", "publish", "presence", "history", "sub_refresh"])
def test_command_without_channel_is_a_bad_request(method: str) -> None:
    assert close_code(list(connected().receive(json.dumps({"id": 1, method: {}})))) == DisconnectCode.BAD_REQUEST


@pytest.mark.parametrize("frame", ['{"id":4,"teleport":{"where":"moon"}}', '{"id":4}'])
def test_unknown_method_or_none_is_a_bad_request(frame: str) -> None:
    assert close_code(list(connected().receive(frame))) == DisconnectCode.BAD_REQUEST


def test_unknown_protobuf_method_is_a_bad_request() -> None:
    # Command{id: 2, field 50: an empty message}: a method this schema does not know.
    assert close_code(list(connected(Format.PROTOBUF).receive(b"\x05\x08\x02\x92\x03\x00"))) == 3501


def test_too_many_commands_in_a_frame_is_a_bad_request() -> None:
    session = ServerSession(Format.JSON, max_commands_per_frame=2)
    session.connected()
    frame = "\n".join(f'{{"id":{i},"ping":{{}}}}' for i in range(1, 4))
    assert close_code(list(session.receive(frame))) == DisconnectCode.BAD_REQUEST


def test_events_after_a_bad_command_in_the_same_frame_are_dropped() -> None:
    events = list(connected().receive('{"id":1,"ping":{}}\n{"subscribe":{"channel":"a"}}\n{"id":3,"ping":{}}'))
    assert isinstance(events[0], CommandReceived)
    assert isinstance(events[1], CloseRequired)
    assert len(events) == 2


def test_json_result_reply_encodes_raw_data_and_omits_defaults() -> None:
    session = connected()
    out = session.reply_result(5, "subscribe", SubscribeResult(recoverable=True, epoch="e", offset=3, data=b'{"a":1}'))
    assert json.loads(out) == {"id": 5, "subscribe": {"recoverable": True, "epoch": "e", "offset": 3, "data": {"a": 1}}}
    assert json.loads(session.reply_result(6, "subscribe", SubscribeResult())) == {"id": 6, "subscribe": {}}


def test_error_reply_in_both_formats() -> None:
    err = ReplyError.of(ErrorCode.PERMISSION_DENIED)
    assert json.loads(connected().reply_error(9, err)) == {
        "id": 9,
        "error": {"code": 103, "message": "permission denied"},
    }
    raw = connected(Format.PROTOBUF).reply_error(9, err)
    reply = Reply()
    reply.ParseFromString(raw[1:])
    assert raw[0] == len(raw) - 1
    assert (reply.id, reply.error.code) == (9, 103)


def test_commands_batched_after_connect_follow_the_connect_outcome() -> None:
    frame = '{"id":1,"connect":{"token":"t"}}\n{"id":2,"subscribe":{"channel":"a"}}'
    accepted = ServerSession(Format.JSON)
    events = accepted.receive(frame)
    first = next(events)
    assert isinstance(first, CommandReceived)
    assert first.method == "connect"
    accepted.connected()  # the shell's connect handler succeeded
    second = next(events)
    assert isinstance(second, CommandReceived)
    assert second.method == "subscribe"

    refused = ServerSession(Format.JSON)
    events = refused.receive(frame)
    next(events)  # connect failed: the session stays connecting
    assert isinstance(next(events), CloseRequired)


def test_no_events_after_the_shell_closes_the_session_mid_frame() -> None:
    session = connected()
    events = session.receive('{"id":1,"ping":{}}\n{"id":2,"ping":{}}')
    next(events)
    session.closed()
    assert list(events) == []
