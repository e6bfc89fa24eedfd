"""Channel patterns of the server API's `channels` (`meshcast.bus.glob`)."""

from __future__ import annotations

import pytest

from meshcast.bus.glob import PatternError, compile_pattern


@pytest.mark.parametrize(
    ("pattern", "matching", "not_matching"),
    [
        ("", ["anything", ""], []),
        ("chat:*", ["chat:a", "chat:"], ["news:a", "xchat:a"]),
        ("chat:?", ["chat:a"], ["chat:ab", "chat:"]),
        ("{chat,news}:*", ["chat:a", "news:b"], ["feed:a", "{chat,news}:a"]),
        ("a{b,c{d,e}}f", ["abf", "acdf", "acef"], ["acf", "af"]),
        ("{,x}y", ["y", "xy"], ["xxy"]),
        ("[!a]x", ["bx", "zx"], ["ax"]),
        ("[a-c]1", ["b1"], ["d1"]),
        ("[{]x", ["{x"], ["x"]),
        (r"a\*b", ["a*b"], ["axb"]),
        (r"a\{b", ["a{b"], ["ab"]),
        (r"a\!b", ["a!b"], ["ab"]),
        ("$secret:*", ["$secret:x"], ["secret:x"]),
    ],
)
def test_patterns_match_as_centrifugo_reads_them(pattern: str, matching: list[str], not_matching: list[str]) -> None:
    matches = compile_pattern(pattern)
    assert [m for m in matching if not matches(m)] == []
    assert [m for m in not_matching if matches(m)] == []


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("{a,b", "unbalanced '{'"),
        ("a}", "unbalanced '}'"),
        ("{a,b}" * 7, "more than 64 alternatives"),
    ],
)
def test_unreadable_patterns_are_refused(pattern: str, reason: str) -> None:
    with pytest.raises(PatternError, match=reason):
        compile_pattern(pattern)


def test_many_stars_cannot_backtrack_forever() -> None:
    # fnmatch's translation is linear here; a naive regex would take ages.
    assert not compile_pattern("*a" * 200 + "b")("a" * 250)
