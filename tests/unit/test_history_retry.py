"""The history service retries only what JetStream could not answer now, and only until its deadline."""

from __future__ import annotations

import pytest

from meshcast.history.retry import retry_unavailable
from meshcast.history.store import StoreError, StoreUnavailable, StreamMissing


class Flaky:
    """Fails with `error` the first `failures` times, then answers."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "answer"


async def test_an_unavailable_store_is_asked_again_until_it_answers() -> None:
    read = Flaky(3, StoreUnavailable("no leader"))
    assert await retry_unavailable(read, deadline=5, endpoint="recover") == "answer"
    assert read.calls == 4


async def test_past_the_deadline_the_unavailability_goes_up_as_it_is() -> None:
    read = Flaky(1000, StoreUnavailable("no leader"))
    with pytest.raises(StoreUnavailable):
        await retry_unavailable(read, deadline=0.3, endpoint="recover")
    assert 2 <= read.calls < 20


@pytest.mark.parametrize("error", [StreamMissing("gone"), StoreError("direct get status 400")])
async def test_other_store_errors_are_not_retried(error: Exception) -> None:
    read = Flaky(1, error)
    with pytest.raises(type(error)):
        await retry_unavailable(read, deadline=5, endpoint="recover")
    assert read.calls == 1
