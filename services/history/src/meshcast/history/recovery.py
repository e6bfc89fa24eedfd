"""Whether a client's missed publications can be given back complete: a pure decision.

Offsets are sequences of the namespace's stream, so one channel's offsets
are increasing but not contiguous, and no position was ever given beyond
the stream's last sequence (a stream's last sequence never goes back within
one epoch, purges included). An offset past it did not come from this
stream: it is no position at all (`known_position`), and the service says so
before it reads anything at that offset (a sequence near 2^64 would overflow
JetStream's ``seq + 1``).

Between removals, what a channel keeps is a suffix of what it received: the
per-channel limit and the age limit both drop the oldest first. A removal
(``history_remove``) breaks that: it purges the channel's messages, oldest
and newest alike, in the same epoch. So a removal first stores a marker, a
message on the channel's removal subject in the same stream, and then
purges the channel's messages *before the marker's sequence* R. Every
position below R is unrecoverable; every position from R on sees a suffix
again (nothing after the marker is purged). The newest marker's sequence is
`removed_at` (0: never removed, or the marker aged out, which happens only
after everything older than it aged out too: the stream's head then decides,
as below). Hence, for a client at `offset` on channel S:

0. `offset` below `removed_at`: not recovered (the removal made a hole).
1. If the message at `offset` is still stored on S, nothing after it is
   gone: the stored messages of S after `offset` are complete.
2. Otherwise (the client's last message was dropped, or `offset` was a
   position given while S was empty), a message of S after `offset` can only
   have been dropped by the per-channel limit (then S still holds at least
   `history_size` messages after `offset`) or from the stream's head (then
   the stream's first sequence is past ``offset + 1``). Neither seen: complete.

The marker is read after the channel's messages: a removal that lands later
purged nothing the read returned, one that landed earlier is seen.

Anything else, a different epoch, or more than `max_publications` missed,
is "not recovered" - never a partial set. A read that fails is no verdict
at all: the service answers a temporary error, never "not recovered".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RecoveryFacts:
    request_epoch: str
    offset: int
    # The stream's epoch when the read started and when it ended.
    epoch_before: str
    epoch_after: str
    # The stream's last sequence when the read started.
    last_seq_before: int
    # The stream's first sequence read after the messages were read.
    first_seq_after: int
    # The sequence of the channel's newest removal marker (0: none), read after the messages.
    removed_at: int
    offset_still_stored: bool
    # Messages of the channel after `offset` (all of them, or max + 1).
    missed: int
    history_size: int
    max_publications: int


def known_position(offset: int, last_seq: int) -> bool:
    """Whether `offset` can be a position of a stream whose last sequence is `last_seq`."""
    return 0 <= offset <= last_seq


def recovered(facts: RecoveryFacts) -> bool:
    if facts.request_epoch != facts.epoch_before or facts.epoch_before != facts.epoch_after:
        return False
    if not known_position(facts.offset, facts.last_seq_before):
        return False
    if facts.offset < facts.removed_at:
        return False
    if facts.missed > facts.max_publications:
        return False
    if facts.offset_still_stored:
        return True
    return facts.first_seq_after <= facts.offset + 1 and facts.missed < facts.history_size
