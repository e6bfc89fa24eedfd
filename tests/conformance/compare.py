"""Normalise two servers' records of one session, then diff them field by field.

What must differ between two correct servers is replaced by what it stands for:

- the run's unique suffix -> ``{u}``;
- client ids -> ``<a>`` for the client the script calls ``a`` (learnt from its
  connect reply), wherever they appear, map keys included;
- epochs -> ``<epoch N>``, numbered per channel in order of appearance;
- offsets -> how many of the channel's publications seen in the session are at or
  before it (a publication's own offset is its rank; a position is the number
  of publications it follows): Centrifugo numbers a channel's publications
  1, 2, 3 from an empty channel's 0; Meshcast's offsets are stream sequences a
  namespace shares, increasing but not consecutive, and an empty channel's
  position is where the stream is;
- ``time``, ``version``, ``node``, ``session``, ``uid``, ``uptime``, metrics and
  process figures, and the names of the server API's ``info`` nodes -> a
  placeholder (present stays present, absent stays absent);
- ``ttl`` -> rounded to 10 s (tokens are minted a moment apart).

A difference is a path (``a#3/subscribe/recoverable``: client ``a``'s reply to
command 3) with each side's value, `MISSING` where a side has none.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .runner import Record

PLACEHOLDERS = {
    "time": "<time>",
    "version": "<version>",
    "node": "<node>",
    "session": "<session>",
    "uid": "<uid>",
    "uptime": "<uptime>",
    "metrics": "<metrics>",
    "process": "<process>",
}


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


@dataclass(frozen=True)
class Diff:
    path: str
    centrifugo: Any
    meshcast: Any
    sent: str | None = None

    def __str__(self) -> str:
        shown = f"\n      sent: {self.sent}" if self.sent else ""
        return f"{self.path}: centrifugo={self.centrifugo!r} meshcast={self.meshcast!r}{shown}"


def _resuffix(value: Any, suffix: str) -> Any:
    if isinstance(value, str):
        return value.replace(suffix, "{u}")
    if isinstance(value, dict):
        return {_resuffix(k, suffix): _resuffix(v, suffix) for k, v in value.items()}
    if isinstance(value, list):
        return [_resuffix(v, suffix) for v in value]
    return value


def _dicts(
    value: Any, channel: str | None, subscription: bool = False
) -> Iterator[tuple[dict[str, Any], str | None, bool]]:
    """Every dict in `value` with its channel context (its own ``channel``, a ``subs`` key,
    or the command's) and whether it is a ``subs`` entry (a subscribe result, whose
    ``data`` does not make it a publication), depth first."""
    if isinstance(value, dict):
        here = value.get("channel") if isinstance(value.get("channel"), str) else channel
        yield value, here, subscription
        for key, item in value.items():
            if key == "subs" and isinstance(item, dict):
                for sub_channel, sub in item.items():
                    yield from _dicts(sub, sub_channel, subscription=True)
            else:
                yield from _dicts(item, here)
    elif isinstance(value, list):
        for item in value:
            yield from _dicts(item, channel)


class Normaliser:
    """One server's naming of clients, epochs and offsets, learnt from its whole record."""

    def __init__(self, record: Record) -> None:
        self.clients: dict[str, str] = {}
        self.epochs: dict[tuple[str | None, str], str] = {}
        offsets: dict[str | None, set[int]] = {}
        self.entries = [
            (e.label, _resuffix(e.value, record.suffix), _resuffix(e.channel, record.suffix), e.sent)
            for e in record.entries
        ]
        for label, value, channel, _ in self.entries:
            connect = value.get("connect") if isinstance(value, dict) and "#" in label else None
            if isinstance(connect, dict) and isinstance(connect.get("client"), str):
                self.clients.setdefault(connect["client"], f"<{label.split('#')[0]}>")
            for item, where, subscription in _dicts(value, channel):
                publication = "data" in item and not subscription
                epoch = item.get("epoch", item.get("#14") if publication else None)
                if isinstance(epoch, str) and epoch and (where, epoch) not in self.epochs:
                    count = sum(1 for (ch, _e) in self.epochs if ch == where)
                    self.epochs[(where, epoch)] = f"<epoch {count + 1}>"
                if publication and isinstance(item.get("offset"), int):
                    offsets.setdefault(where, set()).add(item["offset"])
        self.publications = {ch: sorted(seen) for ch, seen in offsets.items()}

    def normalised(self) -> dict[str, tuple[Any, str | None]]:
        """Label -> (normalised value, frame sent)."""
        return {label: (self._value(value, channel, None), sent) for label, value, channel, sent in self.entries}

    def _value(self, value: Any, channel: str | None, key: str | None) -> Any:
        if isinstance(value, dict):
            here = value.get("channel") if isinstance(value.get("channel"), str) else channel
            out: dict[str, Any] = {}
            for k, item in value.items():
                name = str(self.clients.get(k, k))
                if k in PLACEHOLDERS and item not in ("", 0, None, {}, []):
                    out[name] = PLACEHOLDERS[k]
                elif k == "nodes" and isinstance(item, list):
                    out[name] = [
                        {**self._value(node, here, None), "name": "<node name>"} if isinstance(node, dict) else node
                        for node in item
                    ]
                elif k == "subs" and isinstance(item, dict):
                    out[name] = {ch: self._value(sub, ch, None) for ch, sub in item.items()}
                elif k == "#14" and "data" in value:
                    # Publication.epoch: field 14 of the current public schema, not of Meshcast's.
                    out[name] = self._scalar(item, here, "epoch")
                elif k == "offset" and self._value(item, here, k) == 0:
                    continue  # a position before any publication: proto3 and JSON leave it out
                else:
                    out[name] = self._value(item, here, k)
            return out
        if isinstance(value, list):
            return [self._value(v, channel, key) for v in value]
        return self._scalar(value, channel, key)

    def _scalar(self, value: Any, channel: str | None, key: str | None) -> Any:
        if isinstance(value, str) and value in self.clients:
            return self.clients[value]
        if key == "epoch" and isinstance(value, str) and value:
            return self.epochs.get((channel, value), "<epoch ?>")
        if key == "offset" and isinstance(value, int) and value:
            return bisect.bisect_right(self.publications.get(channel, []), value)
        if key == "ttl" and isinstance(value, int) and value:
            return round(value / 10) * 10
        return value


def flatten(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Leaves of `value` by path; empty containers are leaves of their own."""
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from flatten(item, f"{path}/{key}")
    elif isinstance(value, list) and value:
        for i, item in enumerate(value):
            yield from flatten(item, f"{path}/{i}")
    else:
        yield path, value


def diff(reference: Record, candidate: Record) -> list[Diff]:
    """Every field where `candidate` (Meshcast) differs from `reference` (Centrifugo)."""
    ref = Normaliser(reference).normalised()
    got = Normaliser(candidate).normalised()
    out: list[Diff] = []
    for label in [*ref, *(k for k in got if k not in ref)]:
        ref_value, ref_sent = ref.get(label, (MISSING, None))
        got_value, got_sent = got.get(label, (MISSING, None))
        left = dict(flatten(ref_value, label)) if ref_value is not MISSING else {}
        right = dict(flatten(got_value, label)) if got_value is not MISSING else {}
        for path in [*left, *(p for p in right if p not in left)]:
            a, b = left.get(path, MISSING), right.get(path, MISSING)
            if a != b or type(a) is not type(b):
                out.append(Diff(path, a, b, ref_sent or got_sent))
    return out
