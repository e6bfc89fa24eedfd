"""The recovery decision: complete or not at all."""

from __future__ import annotations

import dataclasses

import pytest

from meshcast.history.recovery import RecoveryFacts, known_position, recovered

BASE = RecoveryFacts(
    request_epoch="e",
    offset=100,
    epoch_before="e",
    epoch_after="e",
    last_seq_before=1000,
    first_seq_after=50,
    removed_at=0,
    offset_still_stored=True,
    missed=10,
    history_size=100,
    max_publications=300,
)


def facts(**changes: object) -> RecoveryFacts:
    return dataclasses.replace(BASE, **changes)  # type: ignore[arg-type]


def test_last_seen_publication_still_stored_means_complete() -> None:
    assert recovered(BASE)
    assert recovered(facts(first_seq_after=500, missed=100))


@pytest.mark.parametrize(
    "change",
    [
        {"request_epoch": "old"},
        {"epoch_after": "new"},
        {"missed": 301},
    ],
    ids=["other-epoch", "stream-recreated-during-read", "over-the-limit"],
)
def test_never_recovered(change: dict[str, object]) -> None:
    assert not recovered(facts(**change))


def test_dropped_last_seen_publication_is_decided_by_head_and_channel_limit() -> None:
    # Nothing dropped from the head past the offset, fewer than history_size kept.
    assert recovered(facts(offset_still_stored=False, first_seq_after=101, missed=99))
    # The head moved past the offset: something after it may be gone.
    assert not recovered(facts(offset_still_stored=False, first_seq_after=102, missed=5))
    # The channel is full: its limit may have dropped publications after the offset.
    assert not recovered(facts(offset_still_stored=False, first_seq_after=1, missed=100))


def test_position_of_an_empty_channel_in_a_fresh_stream_recovers() -> None:
    assert recovered(facts(offset=0, offset_still_stored=False, first_seq_after=1, missed=50))


def test_a_removal_after_the_offset_makes_it_unrecoverable() -> None:
    # The channel's history was removed at stream sequence 150: whatever the
    # channel kept since is a suffix of what came after the removal, not after 100.
    assert not recovered(facts(removed_at=150))
    assert not recovered(facts(removed_at=150, offset_still_stored=False, first_seq_after=1, missed=0))
    # A position given after the removal (the marker's own sequence included) is fine.
    assert recovered(facts(offset=150, removed_at=150, offset_still_stored=False, first_seq_after=1, missed=2))
    assert recovered(facts(removed_at=100))
    assert recovered(facts(removed_at=99))


@pytest.mark.parametrize("offset", [1001, 2000, 2**63, 2**64 - 1])
def test_an_offset_beyond_the_stream_is_not_a_position(offset: int) -> None:
    assert not known_position(offset, 1000)
    assert not recovered(facts(offset=offset, last_seq_before=1000, offset_still_stored=False, missed=0))


def test_offsets_up_to_the_streams_last_sequence_are_positions() -> None:
    assert known_position(0, 0)
    assert known_position(1000, 1000)
    assert not known_position(-1, 1000)
    assert recovered(facts(offset=1000, last_seq_before=1000, offset_still_stored=True, missed=0))
