"""Offset order and gap detection for one history channel's live path (no I/O).

Every publication of a history channel arrives with its stream offset
(``Nats-Sequence``) and the offset of the channel's previous publication
(``Nats-Last-Sequence``). With `offset` the last one delivered, an arrival
whose previous offset is beyond `offset` proves a publication was missed:
the sequencer holds it, and everything after it, until the gap is filled
from history. An arrival at or below `offset` on the plain live path means
the stream started over (a new epoch): the channel's state is lost.

The previous offset is not trusted across a lost NATS connection: messages
the gateway missed meanwhile leave no trace it can see, and a stream leader
that took over with a stale copy can republish with a stale previous offset
(seen in the chaos suite's partition of a stream leader). So a channel is
*suspect* from a disconnect on: the first arrival after it, or the reconnect
itself, makes it ask history what came after its offset before it delivers
anything more.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meshcast.proto.bus_pb2 import Publication


@dataclass(frozen=True, slots=True)
class Item:
    seq: int
    prev: int
    pub: Publication
    # The channel's first publication of the stream's epoch: its push carries the epoch.
    first: bool = False


@dataclass(slots=True)
class Verdict:
    ready: list[Item] = field(default_factory=list)
    # A gap after this offset must be filled before anything else is ready.
    gap_after: int | None = None
    reset: bool = False


class Sequencer:
    __slots__ = ("_filling", "_held", "_suspect", "epoch", "offset")

    def __init__(self) -> None:
        self.offset: int | None = None
        self.epoch = ""
        self._held: list[Item] = []
        self._filling = False
        self._suspect = False

    @property
    def filling(self) -> bool:
        return self._filling

    def held_until(self, offset: int) -> list[Item]:
        """The held arrivals at or below `offset`: what `start(offset)` will pass over."""
        return [item for item in self._held if item.seq <= offset]

    def start(self, channel_offset: int, epoch: str) -> Verdict:
        """The channel's first position (from history): release what arrived before it."""
        if self.offset is not None:
            return Verdict(reset=epoch != self.epoch)
        self.offset = channel_offset
        self.epoch = epoch
        held, self._held = self._held, []
        return self._run(held)

    def push(self, item: Item) -> Verdict:
        if self.offset is None or self._filling:
            self._held.append(item)
            return Verdict()
        if item.seq <= self.offset:
            return Verdict(reset=True)
        if self._suspect:
            self._held.append(item)
            return self._ask()
        return self._run([item])

    def suspect(self) -> None:
        """The live path may have lost messages (the NATS connection went away)."""
        if self.offset is not None:
            self._suspect = True

    def resync(self) -> Verdict:
        """If suspect and not already filling: ask history now for what came after `offset`."""
        if self.offset is None or self._filling or not self._suspect:
            return Verdict()
        return self._ask()

    def _ask(self) -> Verdict:
        assert self.offset is not None
        self._suspect = False
        self._filling = True
        return Verdict(gap_after=self.offset)

    def filled(self, items: list[Item], known_until: int) -> Verdict:
        """The publications after the gap's start, read from history: complete up
        to `known_until`, the channel's newest offset when history was read. A
        held arrival whose predecessor is at or below it lost nothing more (what
        history no longer holds cannot be filled by asking again)."""
        self._filling = False
        held, self._held = self._held, []
        return self._run(items + held, known_until)

    def _run(self, items: list[Item], known_until: int = 0) -> Verdict:
        assert self.offset is not None
        ready: list[Item] = []
        for i, item in enumerate(items):
            if item.seq <= self.offset:
                continue
            if item.prev > self.offset and item.prev > known_until:
                self._filling = True
                self._held = items[i:] + self._held
                return Verdict(ready, gap_after=self.offset)
            ready.append(item)
            self.offset = item.seq
        return Verdict(ready)
