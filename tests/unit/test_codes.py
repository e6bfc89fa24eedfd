"""The two code families and their ranges."""

from __future__ import annotations

from meshcast.protocol import Disconnect, DisconnectCode, ErrorCode, ReplyError, UnsubscribeCode, is_reconnect_code


def test_error_codes_follow_the_specification() -> None:
    assert [int(c) for c in ErrorCode] == list(range(100, 113))
    assert ErrorCode.UNRECOVERABLE_POSITION.message == "unrecoverable position"
    assert ReplyError.of(ErrorCode.INTERNAL).temporary
    assert not ReplyError.of(ErrorCode.PERMISSION_DENIED).temporary


def test_disconnect_ranges_decide_reconnect() -> None:
    assert all(c.reconnect for c in DisconnectCode if int(c) < 3500)
    assert not any(c.reconnect for c in DisconnectCode if int(c) >= 3500)
    assert is_reconnect_code(4000)
    assert not is_reconnect_code(4500)
    assert Disconnect.of(DisconnectCode.NO_PONG) == Disconnect(3012, "no pong")


def test_unsubscribe_codes_of_resubscription_start_at_2500() -> None:
    assert int(UnsubscribeCode.INSUFFICIENT_STATE) == 2500
    assert UnsubscribeCode.SERVER < 2500
