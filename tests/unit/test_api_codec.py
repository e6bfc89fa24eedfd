"""The server API's JSON: Centrifugo's field names, raw JSON payloads, its omission rules."""

from __future__ import annotations

import pytest

from meshcast.api.codec import DecodeFailed, decode_request, encode_message, parse_body
from meshcast.proto import centrifugo_api_pb2 as api


def test_publish_data_is_raw_json_on_the_fast_and_the_slow_path() -> None:
    fast = decode_request({"channel": "c", "data": {"a": [1, "é"]}, "tags": {"k": "v"}}, api.PublishRequest())
    assert (fast.channel, fast.data, dict(fast.tags)) == ("c", '{"a":[1,"é"]}'.encode(), {"k": "v"})
    # An unknown field takes the general path, which ignores it as Centrifugo does.
    slow = decode_request({"channel": "c", "data": {"a": [1, "é"]}, "future": 1}, api.PublishRequest())
    assert slow.data == fast.data


def test_nested_commands_and_positions_decode() -> None:
    batch = decode_request(
        {"commands": [{"publish": {"channel": "c", "data": 1}}, {"history": {"channel": "h", "since": {"offset": 3}}}]},
        api.BatchRequest(),
    )
    assert batch.commands[0].publish.data == b"1"
    assert batch.commands[1].history.since.offset == 3


@pytest.mark.parametrize(
    ("body", "message"),
    [(b"{oops", api.PublishRequest()), (b"[1]", api.PublishRequest()), (b'{"channel": 5}', api.PublishRequest())],
)
def test_what_is_not_the_request_is_refused(body: bytes, message: api.PublishRequest) -> None:
    with pytest.raises(DecodeFailed):
        decode_request(parse_body(body), message)


def test_zero_values_are_left_out_but_what_clients_require_stays() -> None:
    assert encode_message(api.PublishResult()) == {}
    assert encode_message(api.PublishResult(offset=2, epoch="e")) == {"offset": 2, "epoch": "e"}
    assert encode_message(api.PresenceStatsResult()) == {"num_clients": 0, "num_users": 0}
    assert encode_message(api.ChannelsResult()) == {"channels": {}}
    assert encode_message(api.PresenceResult()) == {"presence": {}}
    pub = api.Publication(data=b'{"x":1}', offset=4, info=api.ClientInfo(user="u", conn_info=b'"n"'))
    assert encode_message(api.HistoryResult(publications=[pub])) == {
        "publications": [{"data": {"x": 1}, "info": {"user": "u", "conn_info": "n"}, "offset": 4}]
    }
