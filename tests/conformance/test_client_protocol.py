"""The client protocol, JSON and protobuf, against Centrifugo and Meshcast side by side.

Each scripted session (``sessions/``) runs against both servers at once; their
records are normalised and compared field by field (``compare.py``). A
difference must be one ``known.py`` lists (intended, or open: to fix), and each
difference listed for a session must still show. ``make test`` runs the short
sessions, ``make conformance`` all of them.
"""

from __future__ import annotations

import pytest

from meshcast.protocol import Format

from .conftest import FULL, Pair
from .differential import differences, verdict
from .script import Session
from .sessions import SESSIONS

CASES = [(s, f) for s in SESSIONS if FULL or s.short for f in s.formats]


@pytest.mark.parametrize(("session", "fmt"), CASES, ids=[f"{s.name}-{f.name.lower()}" for s, f in CASES])
async def test_session_matches_centrifugo(pair: Pair, session: Session, fmt: Format) -> None:
    report = verdict(session, fmt, await differences(session, fmt, pair.centrifugo, pair.meshcast))
    assert report is None, report
