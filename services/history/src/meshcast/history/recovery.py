"""Whether a client's missed publications can be given back complete: a pure decision.

Offsets are sequences of the namespace's stream, so one channel's offsets
are increasing but not contiguous. What a channel keeps is always a suffix
of what it received: the per-channel limit and the age limit both drop the
oldest first. Hence, for a client at `offset` on channel S:

1. If the message at `offset` is still stored on S, nothing after it is
   gone: the stored messages of S after `offset` are complete.
2. Otherwise (the client's last message was dropped, or `offset` was a
   position given while S was empty), a message of S after `offset` can only
   have been dropped by the per-channel limit (then S still holds at least
   `history_size` messages after `offset`) or from the stream's head (then
   the stream's first sequence is past ``offset + 1``). Neither seen: complete.

Anything else, a different epoch, or more than `max_publications` missed,
is "not recovered" - never a partial set.
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
    # The stream's first sequence read after the messages were read.
    first_seq_after: int
    offset_still_stored: bool
    # Messages of the channel after `offset` (all of them, or max + 1).
    missed: int
    history_size: int
    max_publications: int


def recovered(facts: RecoveryFacts) -> bool:
    if facts.request_epoch != facts.epoch_before or facts.epoch_before != facts.epoch_after:
        return False
    if facts.missed > facts.max_publications:
        return False
    if facts.offset_still_stored:
        return True
    return facts.first_seq_after <= facts.offset + 1 and facts.missed < facts.history_size
