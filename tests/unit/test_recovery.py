"""The recovery decision: complete or not at all."""

from __future__ import annotations

import dataclasses

import pytest

from meshcast.history.recovery import RecoveryFacts, recovered

BASE = RecoveryFacts(
    request_epoch="e",
    offset=100,
    epoch_before="e",
    epoch_after="e",
    first_seq_after=50,
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
