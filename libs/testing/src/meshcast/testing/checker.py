"""A Jepsen-style checker of what subscribers were sent against what was stored.

Pure functions over recorded histories, no I/O: the stream's contents (offset
and publication id, the truth of order), the acknowledgements publishers
received, and each subscriber's log (`SubscriberLog`: where it first
subscribed, every delivery in arrival order, every time it was told it missed
something). The guarantee judged, for history channels (DESIGN.md section 3):
every stored publication after a subscriber's first position reaches it
exactly once and in stream order, across any number of reconnects, unless it
was told (``recovered: false``, error 112, unsubscribe 2500). Told is allowed
and counted ("flagged"); anything else missing is *lost*.

Results come per phase (one phase per fault of a schedule), a publication
belonging to the phase its offset falls in, a told event to the phase it
happened in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields


@dataclass
class Told:
    """A subscriber was told it missed publications after offset `after`: those up to
    `resumed` (where it subscribed afresh; None until it has) are excused."""

    kind: str
    after: int
    resumed: int | None
    phase: int

    def excuses(self, offset: int) -> bool:
        return offset > self.after and (self.resumed is None or offset <= self.resumed)


@dataclass
class SubscriberLog:
    """What one subscriber of one channel was sent, in arrival order."""

    subscriber: str
    channel: str
    start: int | None = None  # the offset of its first subscribe: it expects everything after it
    deliveries: list[tuple[int, str]] = field(default_factory=list)  # (offset, publication id)
    told: list[Told] = field(default_factory=list)


@dataclass
class PhaseStats:
    """One row of the table: one fault's publications and what became of them."""

    name: str
    acked: int = 0  # publications acknowledged to their publisher in this phase
    unstored: int = 0  # acknowledged, yet not in the stream
    lost: int = 0  # (subscriber, publication) pairs never delivered and never told
    duplicated: int = 0  # deliveries of a publication already delivered
    reordered: int = 0  # deliveries of an offset below one delivered before
    corrupt: int = 0  # deliveries whose offset holds another publication in the stream
    flagged: int = 0  # (subscriber, publication) pairs missed but told
    told: int = 0  # told events (recovered false, error 112, unsubscribe 2500)
    deliveries: int = 0
    recovery_s: float | None = None
    presence_s: float | None = None

    @property
    def violations(self) -> int:
        return self.unstored + self.lost + self.duplicated + self.reordered + self.corrupt


PhaseOf = Callable[[int], int]


def check_history(
    phases: Sequence[str],
    stored: Mapping[str, Sequence[tuple[int, str]]],
    acked: Mapping[str, Mapping[str, int]],
    logs: Iterable[SubscriberLog],
    phase_of: PhaseOf,
    upto: Mapping[str, int],
) -> list[PhaseStats]:
    """Judge history channels; only offsets up to ``upto[channel]`` (what every
    subscriber was given time to catch up to) count as expected."""
    rows = [PhaseStats(name) for name in phases]
    last = len(rows) - 1

    def row(phase: int) -> PhaseStats:
        return rows[min(max(phase, 0), last)]

    by_offset = {ch: dict(pubs) for ch, pubs in stored.items()}
    stored_ids = {ch: set(index.values()) for ch, index in by_offset.items()}
    for ch, ids in acked.items():
        for pub, phase in ids.items():
            row(phase).acked += 1
            if pub not in stored_ids.get(ch, set()):
                row(phase).unstored += 1
    for log in logs:
        _judge(log, by_offset.get(log.channel, {}), upto.get(log.channel, 0), phase_of, row)
    return rows


def _judge(
    log: SubscriberLog,
    index: Mapping[int, str],
    upto: int,
    phase_of: PhaseOf,
    row: Callable[[int], PhaseStats],
) -> None:
    for told in log.told:
        row(told.phase).told += 1
    if log.start is None:
        return  # never subscribed: it expects nothing
    seen: set[int] = set()
    highest = log.start
    for offset, pub in log.deliveries:
        if offset > upto:
            continue  # past what this check covers (the stream was read before it arrived)
        stats = row(phase_of(offset))
        stats.deliveries += 1
        if index.get(offset) != pub:
            stats.corrupt += 1
        if offset in seen:
            stats.duplicated += 1
            continue
        seen.add(offset)
        if offset < highest:
            stats.reordered += 1
        highest = max(highest, offset)
    for offset in index:
        if log.start < offset <= upto and offset not in seen:
            stats = row(phase_of(offset))
            if any(t.excuses(offset) for t in log.told):
                stats.flagged += 1
            else:
                stats.lost += 1


def check_live(
    phases: Sequence[str], acked: Mapping[str, Mapping[str, int]], logs: Iterable[SubscriberLog]
) -> list[PhaseStats]:
    """Channels without history promise no recovery: report duplicates and per-writer
    reordering (which they must not show) and how many acknowledged ones were delivered."""
    rows = [PhaseStats(name) for name in phases]
    last = len(rows) - 1
    for ids in acked.values():
        for phase in ids.values():
            rows[min(phase, last)].acked += 1
    for log in logs:
        phase_of_id = acked.get(log.channel, {})
        seen: Counter[str] = Counter()
        highest: dict[str, int] = {}
        for _, pub in log.deliveries:
            stats = rows[min(phase_of_id.get(pub, last), last)]
            stats.deliveries += 1
            seen[pub] += 1
            if seen[pub] > 1:
                stats.duplicated += 1
                continue
            writer, _, number = pub.rpartition(":")
            n = int(number) if number.isdigit() else 0
            if n < highest.get(writer, -1):
                stats.reordered += 1
            highest[writer] = max(highest.get(writer, -1), n)
    return rows


def total(rows: Sequence[PhaseStats], name: str = "total") -> PhaseStats:
    out = PhaseStats(name)
    for f in fields(PhaseStats):
        if f.name in ("name", "recovery_s", "presence_s"):
            continue
        setattr(out, f.name, sum(getattr(r, f.name) for r in rows))
    return out


_COLUMNS = (
    ("fault", "name"),
    ("acked", "acked"),
    ("lost", "lost"),
    ("dup", "duplicated"),
    ("reord", "reordered"),
    ("flagged", "flagged"),
    ("told", "told"),
    ("unstored", "unstored"),
    ("corrupt", "corrupt"),
    ("delivered", "deliveries"),
    ("recovery s", "recovery_s"),
    ("presence s", "presence_s"),
)


def render(rows: Sequence[PhaseStats]) -> str:
    """A plain-text table, one row per phase."""

    def cell(value: object) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.1f}"
        return str(value)

    table = [[title for title, _ in _COLUMNS]]
    table += [[cell(getattr(r, attr)) for _, attr in _COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(_COLUMNS))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True)))
        for line in table
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
