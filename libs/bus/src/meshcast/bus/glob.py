"""Channel patterns of the server API's ``channels``, read as Centrifugo reads
them (a glob without separators): ``*`` any run of characters, ``?`` one
character, ``[abc]``, ``[a-z]`` and ``[!abc]`` a class, ``{a,b,...}``
alternatives (nested ones too) and ``\\x`` the character x itself. An empty
pattern matches every channel.

Alternatives are expanded into plain globs, each matched with `fnmatch`
(whose translation cannot backtrack catastrophically); a pattern that expands
into more than `max_alternatives` globs, or whose braces do not balance, is a
`PatternError`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Final

MAX_ALTERNATIVES: Final = 64


class PatternError(ValueError):
    """The pattern cannot be read; the message says why."""


def compile_pattern(pattern: str, max_alternatives: int = MAX_ALTERNATIVES) -> Callable[[str], bool]:
    """A predicate: does a channel name match `pattern`?"""
    if not pattern:
        return lambda _channel: True
    globs = [_escaped(g) for g in _expand(pattern, max_alternatives)]
    if len(globs) == 1:
        only = globs[0]
        return lambda channel: fnmatch.fnmatchcase(channel, only)
    return lambda channel: any(fnmatch.fnmatchcase(channel, g) for g in globs)


def _expand(pattern: str, limit: int) -> list[str]:
    """`pattern` with every ``{a,b}`` replaced by each alternative in turn."""
    start = _open_brace(pattern)
    if start < 0:
        return [pattern]
    end, options = _alternatives(pattern, start)
    head, tail = pattern[:start], pattern[end + 1 :]
    out: list[str] = []
    for option in options:
        for expanded in _expand(head + option + tail, limit):
            out.append(expanded)
            if len(out) > limit:
                raise PatternError(f"pattern expands into more than {limit} alternatives")
    return out


def _open_brace(pattern: str) -> int:
    """Index of the first ``{`` outside a class and not escaped; -1 when none."""
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c == "{":
            return i
        elif c == "}":
            raise PatternError("unbalanced '}' in pattern")
        i += 1
    return -1


def _alternatives(pattern: str, start: int) -> tuple[int, list[str]]:
    """The closing brace of the ``{`` at `start` and the top-level alternatives inside."""
    depth, i, piece = 0, start + 1, start + 1
    options: list[str] = []
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            if depth == 0:
                options.append(pattern[piece:i])
                return i, options
            depth -= 1
        elif c == "," and depth == 0:
            options.append(pattern[piece:i])
            piece = i + 1
        i += 1
    raise PatternError("unbalanced '{' in pattern")


def _escaped(glob: str) -> str:
    """``\\x`` as fnmatch spells a literal x: ``[x]``."""
    out: list[str] = []
    i = 0
    while i < len(glob):
        c = glob[i]
        if c == "\\" and i + 1 < len(glob):
            literal = glob[i + 1]
            out.append(f"[{literal}]" if literal != "!" else "!")
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)
