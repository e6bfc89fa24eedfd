"""A history channel's live path: offset order, duplicates, gaps, resets."""

from __future__ import annotations

from meshcast.gateway.sequencer import Item, Sequencer
from meshcast.proto.bus_pb2 import Publication


def item(seq: int, prev: int) -> Item:
    return Item(seq, prev, Publication(data=str(seq).encode()))


def seqs(items: list[Item]) -> list[int]:
    return [i.seq for i in items]


def started(offset: int = 10) -> Sequencer:
    s = Sequencer()
    s.start(offset, "e1")
    return s


def test_arrivals_before_the_first_position_are_held_then_released_in_order() -> None:
    s = Sequencer()
    assert s.push(item(11, 10)).ready == []
    assert s.push(item(14, 11)).ready == []
    verdict = s.start(10, "e1")
    assert seqs(verdict.ready) == [11, 14]
    assert s.offset == 14


def test_held_arrivals_already_covered_by_the_position_are_dropped() -> None:
    s = Sequencer()
    s.push(item(9, 5))
    s.push(item(12, 9))
    assert seqs(s.start(10, "e1").ready) == [12]


def test_consecutive_publications_of_the_channel_flow() -> None:
    s = started(10)
    # Offsets are stream sequences: other channels' messages sit between them.
    assert seqs(s.push(item(13, 10)).ready) == [13]
    assert seqs(s.push(item(20, 13)).ready) == [20]


def test_previous_offset_beyond_the_last_delivered_is_a_gap() -> None:
    s = started(10)
    verdict = s.push(item(20, 15))
    assert verdict.ready == []
    assert verdict.gap_after == 10
    assert s.filling
    # Arrivals during the fill wait behind it.
    assert s.push(item(25, 20)).ready == []
    verdict = s.filled([item(15, 0)], known_until=20)
    assert seqs(verdict.ready) == [15, 20, 25]
    assert not s.filling


def test_fill_that_overlaps_held_arrivals_delivers_each_once() -> None:
    s = started(10)
    s.push(item(20, 15))
    verdict = s.filled([item(15, 0), item(20, 0)], known_until=20)
    assert seqs(verdict.ready) == [15, 20]


def test_predecessor_that_history_no_longer_has_is_not_asked_for_again() -> None:
    s = started(10)
    s.push(item(20, 15))
    verdict = s.filled([], known_until=20)
    assert seqs(verdict.ready) == [20]
    assert verdict.gap_after is None


def test_gap_after_the_fill_s_read_is_a_new_gap() -> None:
    s = started(10)
    s.push(item(20, 15))
    s.push(item(30, 27))
    verdict = s.filled([item(15, 0)], known_until=20)
    assert seqs(verdict.ready) == [15, 20]
    assert verdict.gap_after == 20


def test_an_offset_going_backwards_on_the_live_path_is_a_reset() -> None:
    s = started(10)
    assert s.push(item(3, 0)).reset


def test_a_second_start_with_another_epoch_is_a_reset() -> None:
    s = started(10)
    assert not s.start(12, "e1").reset
    assert s.start(12, "e2").reset


def test_after_a_lost_connection_the_next_arrival_waits_for_history_whatever_its_previous_offset() -> None:
    seq = Sequencer()
    seq.start(10, "e")
    seq.suspect()
    # A stale leader republished 40 as if it followed 10: not trusted, history asked first.
    verdict = seq.push(Item(40, 10, Publication()))
    assert verdict.ready == []
    assert verdict.gap_after == 10
    assert seq.filling
    missed = [Item(20, 10, Publication()), Item(30, 20, Publication())]
    done = seq.filled(missed, known_until=30)
    assert [i.seq for i in done.ready] == [20, 30, 40]
    assert seq.offset == 40


def test_a_reconnect_asks_history_once_even_with_no_new_arrival() -> None:
    seq = Sequencer()
    assert seq.resync().gap_after is None  # not started: nothing to ask
    seq.start(5, "e")
    assert seq.resync().gap_after is None  # not suspect
    seq.suspect()
    assert seq.resync().gap_after == 5
    assert seq.resync().gap_after is None  # already filling
    assert seq.filled([], known_until=5).ready == []
    assert seq.push(Item(6, 5, Publication())).ready == [Item(6, 5, Publication())]
