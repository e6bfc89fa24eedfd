"""The chaos checker, synchronously: each kind of violation found, told gaps excused."""

from __future__ import annotations

from meshcast.testing.checker import (
    PhaseStats,
    SubscriberLog,
    Told,
    check_history,
    check_live,
    render,
    total,
)

PHASES = ["steady", "fault"]
STORED = {"hist:a": [(2, "w:1"), (4, "w:2"), (6, "w:3"), (8, "w:4")]}
ACKED = {"hist:a": {"w:1": 0, "w:2": 0, "w:3": 1, "w:4": 1}}
UPTO = {"hist:a": 8}


def phase_of(offset: int) -> int:
    return 0 if offset <= 4 else 1


def judge(*logs: SubscriberLog) -> list[PhaseStats]:
    return check_history(PHASES, STORED, ACKED, logs, phase_of, UPTO)


def log(deliveries: list[tuple[int, str]], start: int = 0, told: list[Told] | None = None) -> SubscriberLog:
    return SubscriberLog("s1", "hist:a", start=start, deliveries=deliveries, told=told or [])


def test_everything_once_in_order_is_clean() -> None:
    rows = judge(log([(2, "w:1"), (4, "w:2"), (6, "w:3"), (8, "w:4")]))
    assert [r.violations for r in rows] == [0, 0]
    assert [r.acked for r in rows] == [2, 2]
    assert total(rows).deliveries == 4


def test_a_missing_publication_is_lost_in_its_phase() -> None:
    rows = judge(log([(2, "w:1"), (4, "w:2"), (8, "w:4")]))
    assert (rows[0].lost, rows[1].lost) == (0, 1)


def test_a_gap_the_subscriber_was_told_about_is_flagged_not_lost() -> None:
    told = [Told("recovered false", after=4, resumed=6, phase=1)]
    rows = judge(log([(2, "w:1"), (4, "w:2"), (8, "w:4")], told=told))
    assert (rows[1].lost, rows[1].flagged, rows[1].told) == (0, 1, 1)


def test_a_told_window_still_open_excuses_everything_after_it() -> None:
    told = [Told("error 112", after=4, resumed=None, phase=1)]
    rows = judge(log([(2, "w:1"), (4, "w:2")], told=told))
    assert (rows[1].lost, rows[1].flagged) == (0, 2)


def test_duplicates_and_reordering_are_counted() -> None:
    rows = judge(log([(2, "w:1"), (6, "w:3"), (4, "w:2"), (6, "w:3"), (8, "w:4")]))
    assert rows[1].duplicated == 1
    assert rows[0].reordered == 1
    assert rows[1].lost == 0


def test_a_delivery_naming_another_publication_is_corrupt() -> None:
    rows = judge(log([(2, "w:1"), (4, "w:9"), (6, "w:3"), (8, "w:4")]))
    assert rows[0].corrupt == 1


def test_an_acknowledged_publication_missing_from_the_stream_is_unstored() -> None:
    acked = {"hist:a": {**ACKED["hist:a"], "w:5": 1}}
    rows = check_history(PHASES, STORED, acked, [], phase_of, UPTO)
    assert rows[1].unstored == 1


def test_only_what_came_after_the_first_position_is_expected() -> None:
    rows = judge(log([(6, "w:3"), (8, "w:4")], start=4))
    assert total(rows).violations == 0


def test_offsets_past_the_checked_range_are_not_judged_yet() -> None:
    rows = check_history(PHASES, STORED, ACKED, [log([(2, "w:1"), (4, "w:2"), (10, "w:5")])], phase_of, {"hist:a": 4})
    assert total(rows).violations == 0


def test_a_subscriber_that_never_subscribed_expects_nothing() -> None:
    rows = judge(SubscriberLog("s2", "hist:a"))
    assert total(rows).violations == 0


def test_live_channels_report_duplicates_and_per_writer_reordering() -> None:
    acked = {"live:a": {"w:1": 0, "w:2": 0, "v:1": 1}}
    logs = [SubscriberLog("s1", "live:a", deliveries=[(0, "w:2"), (0, "v:1"), (0, "w:1"), (0, "w:1")])]
    rows = check_live(PHASES, acked, logs)
    assert (total(rows).duplicated, total(rows).reordered, total(rows).acked) == (1, 1, 3)


def test_the_table_has_one_line_per_phase_under_a_header() -> None:
    rows = judge(log([(2, "w:1")]))
    rows[1].recovery_s = 1.25
    lines = render(rows).splitlines()
    assert len(lines) == 4
    assert lines[0].split()[:3] == ["fault", "acked", "lost"]
    assert "1.2" in lines[3]
