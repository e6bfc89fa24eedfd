"""known.py and docs/compatibility.md tell the same story: every difference named once,
each under its heading, the open ones with the frames that show them."""

from __future__ import annotations

import re
from pathlib import Path

from .known import INTENDED, KNOWN, OPEN
from .sessions import API_SESSIONS, SESSIONS
from .test_grpc_api import SESSION as GRPC_SESSION

DOC = Path(__file__).resolve().parents[2] / "docs" / "compatibility.md"
OPEN_HEADING = "## Open differences (to fix)"
FIXED_HEADING = "## Fixed"


def _ids(text: str) -> list[str]:
    return re.findall(r"^### `([a-z0-9-]+)`", text, flags=re.MULTILINE)


def test_every_known_difference_has_one_entry_under_its_heading() -> None:
    text = DOC.read_text()
    intended_part, _, rest = text.partition(OPEN_HEADING)
    assert rest, f"{DOC.name} has no {OPEN_HEADING!r} heading"
    open_part = rest.partition(FIXED_HEADING)[0]
    assert sorted(_ids(intended_part)) == sorted(k.id for k in INTENDED)
    assert sorted(_ids(open_part)) == sorted(k.id for k in OPEN)


def test_known_differences_name_real_sessions() -> None:
    names = {s.name for s in [*SESSIONS, *API_SESSIONS, GRPC_SESSION]}
    assert len({k.id for k in KNOWN}) == len(KNOWN)
    for known in KNOWN:
        for where in known.where:
            if isinstance(where.sessions, tuple):
                assert set(where.sessions) <= names, (known.id, set(where.sessions) - names)
            else:
                assert where.witness in names, (known.id, "a Where of every session names a witness session")
