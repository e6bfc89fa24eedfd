"""The server API over HTTP against Centrifugo's: every method, its error codes and
envelopes, and the statuses of requests that never reach a method, with clients
watching what each call does (``sessions/server_api.py``)."""

from __future__ import annotations

import pytest

from meshcast.protocol import Format

from .conftest import FULL, Pair
from .differential import differences, verdict
from .script import Session
from .sessions import API_SESSIONS

CASES = [s for s in API_SESSIONS if FULL or s.short]


@pytest.mark.parametrize("session", CASES, ids=[s.name for s in CASES])
async def test_api_session_matches_centrifugo(pair: Pair, session: Session) -> None:
    report = verdict(session, Format.JSON, await differences(session, Format.JSON, pair.centrifugo, pair.meshcast))
    assert report is None, report
