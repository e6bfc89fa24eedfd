"""`make run`'s restart delays: Kubernetes-style exponential backoff."""

from __future__ import annotations

import pytest

from meshcast.devtools.backoff import Backoff, BackoffPolicy


def test_delays_double_up_to_the_cap() -> None:
    backoff = Backoff(BackoffPolicy(initial=0.5, cap=4.0, reset_after=30))
    assert [backoff.delay(uptime=1) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_process_that_stayed_up_starts_over() -> None:
    backoff = Backoff(BackoffPolicy(initial=0.5, cap=4.0, reset_after=30))
    assert [backoff.delay(uptime=1) for _ in range(3)] == [0.5, 1.0, 2.0]
    assert backoff.delay(uptime=30) == 0.5
    assert backoff.delay(uptime=29.9) == 1.0


@pytest.mark.parametrize(("initial", "cap", "reset_after"), [(0, 1, 1), (2, 1, 1), (0.5, 1, 0)])
def test_a_policy_that_cannot_work_is_refused(initial: float, cap: float, reset_after: float) -> None:
    with pytest.raises(ValueError, match="initial"):
        BackoffPolicy(initial, cap, reset_after)


def test_an_exit_by_signal_is_named() -> None:
    from meshcast.devtools.supervisor import describe_exit

    assert describe_exit(-9) == "-9 (SIGKILL)"
    assert describe_exit(1) == "1"
    assert describe_exit(-200) == "-200"
