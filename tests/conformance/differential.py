"""One scripted session against both servers, concurrently, and the verdict on its diffs."""

from __future__ import annotations

import asyncio
import secrets

from meshcast.protocol import Format

from .compare import Diff, diff
from .known import KNOWN as _KNOWN
from .known import Where, covering
from .runner import Run, Target
from .script import Session


async def differences(session: Session, fmt: Format, centrifugo: Target, meshcast: Target) -> list[Diff]:
    suffix = "u" + secrets.token_hex(3)
    reference, candidate = await asyncio.gather(
        Run(centrifugo, fmt, suffix).run(session), Run(meshcast, fmt, suffix).run(session)
    )
    return diff(reference, candidate)


def verdict(session: Session, fmt: Format, diffs: list[Diff]) -> str | None:
    """None when every diff is known and every known difference of this session showed;
    otherwise a report of what is new and what went away."""
    used: set[int] = set()
    new: list[Diff] = []
    for d in diffs:
        found = covering(session.name, fmt, d)
        if found is None:
            new.append(d)
        else:
            used.add(id(found[1]))
    gone = [
        (known.id, where)
        for known in _KNOWN
        for where in known.where
        if where.must_show_in(session.name, fmt) and id(where) not in used
    ]
    if not new and not gone:
        return None
    lines = [f"session {session.name} ({fmt.name.lower()}): {session.about}".rstrip(": ")]
    if new:
        lines.append("differences from Centrifugo that no entry of known.py covers:")
        lines += [f"  {d}" for d in new]
    if gone:
        lines.append("known differences that did not show (fixed? then drop them from known.py and the docs):")
        lines += [f"  {kid}: {_shown(where)}" for kid, where in gone]
    return "\n".join(lines)


def _shown(where: Where) -> str:
    return f"paths {', '.join(where.paths)}"
