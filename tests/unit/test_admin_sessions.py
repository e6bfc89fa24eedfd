"""Admin logins and sessions (`meshcast.api.admin_sessions`): synchronous, time passed in."""

from __future__ import annotations

import pytest

from meshcast.api.admin_sessions import AdminSessions, LoginLimiter, Verdict

SECRET = "s3cret-admin"


def _sessions(*, ttl: float = 100.0, max_sessions: int = 8, failures: int = 3, window: float = 60.0) -> AdminSessions:
    return AdminSessions(SECRET, ttl=ttl, max_sessions=max_sessions, limiter=LoginLimiter(failures, window))


def test_the_right_secret_opens_a_session_with_a_random_token() -> None:
    sessions = _sessions()
    first = sessions.login(SECRET, 0.0)
    second = sessions.login(SECRET, 0.0)
    assert first.verdict is Verdict.ADMITTED
    assert second.verdict is Verdict.ADMITTED
    assert len(first.token) >= 40
    assert first.token != second.token
    assert sessions.valid(first.token, 1.0)
    assert sessions.valid(second.token, 1.0)


def test_a_wrong_secret_is_refused_without_a_session() -> None:
    sessions = _sessions()
    for wrong in ("", "s3cret", SECRET + "x", SECRET.upper()):
        assert sessions.login(wrong, 0.0).verdict is Verdict.REFUSED
        sessions = _sessions()  # fresh, so that the limiter does not speak first
    assert len(sessions) == 0


def test_unknown_and_empty_tokens_are_not_sessions() -> None:
    sessions = _sessions()
    sessions.login(SECRET, 0.0)
    assert not sessions.valid("", 0.0)
    assert not sessions.valid("not-a-token", 0.0)


def test_a_session_expires_on_the_server_after_its_ttl() -> None:
    sessions = _sessions(ttl=10.0)
    token = sessions.login(SECRET, 100.0).token
    assert sessions.valid(token, 109.9)
    assert not sessions.valid(token, 110.0)
    assert not sessions.valid(token, 100.0)  # ended for good, even if the clock were earlier
    assert len(sessions) == 0


def test_logout_ends_the_session() -> None:
    sessions = _sessions()
    token = sessions.login(SECRET, 0.0).token
    sessions.logout(token)
    sessions.logout(token)  # twice is harmless
    assert not sessions.valid(token, 0.0)


def test_failed_logins_are_limited_even_for_the_right_secret_until_the_window_passes() -> None:
    sessions = _sessions(failures=3, window=60.0)
    for second in (0.0, 1.0, 2.0):
        assert sessions.login("guess", second).verdict is Verdict.REFUSED
    limited = sessions.login(SECRET, 3.0)
    assert limited.verdict is Verdict.LIMITED
    assert limited.token == ""
    assert limited.retry_after == pytest.approx(57.0)
    assert sessions.login("guess", 59.0).verdict is Verdict.LIMITED  # a limited try is not a failure
    assert sessions.login(SECRET, 60.0).verdict is Verdict.ADMITTED  # the first failure left the window


def test_successful_logins_do_not_count_against_the_limit() -> None:
    sessions = _sessions(failures=2)
    for second in range(10):
        assert sessions.login(SECRET, float(second)).verdict is Verdict.ADMITTED


def test_beyond_max_sessions_the_oldest_session_ends() -> None:
    sessions = _sessions(max_sessions=2)
    tokens = [sessions.login(SECRET, float(i)).token for i in range(3)]
    assert len(sessions) == 2
    assert not sessions.valid(tokens[0], 3.0)
    assert sessions.valid(tokens[1], 3.0)
    assert sessions.valid(tokens[2], 3.0)


def test_an_empty_secret_cannot_make_sessions() -> None:
    with pytest.raises(ValueError, match="admin secret"):
        AdminSessions("", ttl=1.0, max_sessions=1, limiter=LoginLimiter(1, 1.0))
