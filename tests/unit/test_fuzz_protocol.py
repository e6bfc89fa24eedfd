"""The protocol core never raises and never answers outside the specification, whatever it is fed."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from meshcast.protocol import CloseRequired, CommandReceived, DisconnectCode, Format, PongReceived, ServerSession
from meshcast.protocol.codec import encode_varint
from meshcast.protocol.session import METHODS

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
commands = st.fixed_dictionaries(
    {},
    optional={
        "id": st.integers(min_value=-5, max_value=2**33) | st.text(max_size=3),
        **{
            m: st.dictionaries(st.sampled_from(["channel", "token", "data", "limit", "since", "offset"]), json_values)
            for m in METHODS
        },
        "junk": json_values,
    },
)


def check(events: list[Any]) -> None:
    for event in events:
        assert isinstance(event, CommandReceived | PongReceived | CloseRequired)
        if isinstance(event, CloseRequired):
            assert event.disconnect.code == DisconnectCode.BAD_REQUEST


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200), st.booleans(), st.sampled_from(list(Format)))
def test_random_frames_never_raise(data: bytes | str, connected: bool, fmt: Format) -> None:
    session = ServerSession(fmt)
    if connected:
        session.connected()
    check(list(session.receive(data)))


@settings(max_examples=300, deadline=None)
@given(st.lists(commands, min_size=1, max_size=4), st.booleans())
def test_random_json_commands_never_raise(batch: list[dict[str, Any]], connected: bool) -> None:
    session = ServerSession(Format.JSON)
    if connected:
        session.connected()
    check(list(session.receive("\n".join(json.dumps(c) for c in batch))))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=60), min_size=1, max_size=4))
def test_random_length_delimited_protobuf_never_raises(bodies: list[bytes]) -> None:
    session = ServerSession(Format.PROTOBUF)
    session.connected()
    check(list(session.receive(b"".join(encode_varint(len(b)) + b for b in bodies))))
