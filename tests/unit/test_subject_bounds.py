"""Every subject a client influences is bounded: `fits_token` is exact about the escaped length."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshcast.bus import MAX_TOKEN_LENGTH, encode_token, fits_token


@given(st.text(max_size=MAX_TOKEN_LENGTH))
def test_fits_token_is_the_escaped_length_bound(name: str) -> None:
    assert fits_token(name) == (len(encode_token(name)) <= MAX_TOKEN_LENGTH)


def test_names_at_the_edge() -> None:
    assert fits_token("a" * MAX_TOKEN_LENGTH)
    assert not fits_token("a" * (MAX_TOKEN_LENGTH + 1))
    assert not fits_token("." * (MAX_TOKEN_LENGTH // 3 + 1))
    assert fits_token("")
