"""`make run EXAMPLE=<name>`: an example backend from ``examples/<name>/`` as one more
supervised program of the stack.

An example is a script using ``meshcast.backend`` only; it connects as the NATS user
``backend`` (the URL and inbox prefix in ``MESHCAST_NATS_URL`` /
``MESHCAST_NATS_INBOX_PREFIX``), its namespaces file (which delegates the decisions it
makes) replaces ``config/namespaces.yaml``, and it counts as ready once it answers its
rpc method: a request as the gateways send it, so ready means serving.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import nats
from nats.errors import Error as NatsError

from meshcast.bus import Subjects
from meshcast.proto.proxy_pb2 import RPCRequest

from .errors import DevtoolsError

EXAMPLES_DIR: Final = "examples"


@dataclass(frozen=True, slots=True)
class Example:
    name: str
    script: Path
    # Replaces config/namespaces.yaml: the namespaces whose decisions the example makes.
    namespaces: Path
    # The rpc method it answers once ready.
    ready_rpc: str


# Each example's script, namespaces file (under examples/<name>/) and readiness rpc.
EXAMPLES: Final = {"chat": ("backend.py", "namespaces.yaml", "who")}


class UnknownExample(DevtoolsError):
    """`make run EXAMPLE=...` names no example."""


def find_example(root: Path, name: str) -> Example:
    """The example `name` of the checkout at `root`."""
    try:
        script, namespaces, ready_rpc = EXAMPLES[name]
    except KeyError:
        raise UnknownExample(f"no example {name!r}: EXAMPLE is one of {', '.join(sorted(EXAMPLES))}") from None
    folder = root / EXAMPLES_DIR / name
    return Example(name, folder / script, folder / namespaces, ready_rpc)


async def answers_rpc(url: str, inbox_prefix: str, method: str) -> bool:
    """Whether a backend answers the rpc `method` within a second (any reply counts)."""
    try:
        async with asyncio.timeout(1.5):
            nc = await nats.connect(url, inbox_prefix=inbox_prefix, connect_timeout=1, allow_reconnect=False)
            try:
                ask = RPCRequest(client="make-run", method=method, data=b"{}")
                await nc.request(Subjects().rpc(method), ask.SerializeToString(), timeout=1)
            finally:
                with contextlib.suppress(NatsError, OSError):
                    await nc.close()
    except (NatsError, OSError, TimeoutError):
        return False
    return True
