"""Publication pushes and WebSocket frames of the fan-out path."""

from __future__ import annotations

import json
import struct

import pytest

from meshcast.proto.client_pb2 import ClientInfo, Publication, Reply
from meshcast.protocol import PING, Format, join_pushes, publication_push, ws_frame
from meshcast.protocol.codec import encode_varint, raw_json


def test_json_publication_push_embeds_data_and_info() -> None:
    info = ClientInfo(user="u", client="c", conn_info=b'{"name":"U"}')
    push = publication_push(Format.JSON, "chat:a", b'{"t":1}', info=info, offset=7, tags={"k": "v"})
    assert json.loads(push) == {
        "push": {
            "channel": "chat:a",
            "pub": {
                "data": {"t": 1},
                "info": {"user": "u", "client": "c", "conn_info": {"name": "U"}},
                "offset": 7,
                "tags": {"k": "v"},
            },
        }
    }


def test_protobuf_publication_push_is_a_length_delimited_reply() -> None:
    push = publication_push(Format.PROTOBUF, "a", b"\x00\x01binary", offset=2)
    reply = Reply()
    reply.ParseFromString(push[1:])
    assert push[0] == len(push) - 1
    assert reply.push.channel == "a"
    assert reply.push.pub.data == b"\x00\x01binary"
    assert reply.push.pub.offset == 2


def test_the_epoch_is_written_when_given_in_both_formats() -> None:
    # Publication field 14 of the public schema; Centrifugo sends it with a channel's first.
    pub = json.loads(publication_push(Format.JSON, "a", b"{}", offset=1, epoch="ep"))["push"]["pub"]
    assert pub == {"data": {}, "offset": 1, "epoch": "ep"}
    assert "epoch" not in json.loads(publication_push(Format.JSON, "a", b"{}", offset=2))["push"]["pub"]
    reply = Reply()
    reply.ParseFromString(publication_push(Format.PROTOBUF, "a", b"x", offset=1, epoch="ep")[1:])
    assert reply.push.pub.epoch == "ep"
    assert Publication.DESCRIPTOR.fields_by_name["epoch"].number == 14


def test_non_json_data_reaches_json_clients_as_a_string() -> None:
    push = publication_push(Format.JSON, "a", b"\xffnot json")
    assert isinstance(json.loads(push)["push"]["pub"]["data"], str)
    assert raw_json(b"") == "null"


def test_batched_pushes_keep_each_format_s_framing() -> None:
    a = publication_push(Format.JSON, "a", b"1")
    b = publication_push(Format.JSON, "a", b"2")
    assert [json.loads(line)["push"]["pub"]["data"] for line in join_pushes(Format.JSON, [a, b]).split(b"\n")] == [1, 2]
    pa = publication_push(Format.PROTOBUF, "a", b"1")
    assert join_pushes(Format.PROTOBUF, [pa, pa]) == pa + pa


@pytest.mark.parametrize(("size", "header"), [(5, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)])
def test_ws_frame_uses_the_shortest_length_encoding(size: int, header: int) -> None:
    frame = ws_frame(b"x" * size, binary=False)
    assert len(frame) == size + header
    assert frame[0] == 0x81
    if header == 4:
        assert frame[1] == 126
        assert struct.unpack("!H", frame[2:4])[0] == size
    elif header == 10:
        assert frame[1] == 127
        assert struct.unpack("!Q", frame[2:10])[0] == size
    assert ws_frame(b"", binary=True)[0] == 0x82


def test_ping_is_an_empty_reply() -> None:
    assert PING[Format.JSON] == b"{}"
    assert PING[Format.PROTOBUF] == encode_varint(0) == b"\x00"
