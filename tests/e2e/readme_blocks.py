"""The code blocks of the READMEs marked runnable, and their text pointed at a test stack.

A block is runnable when the line before its fence is ``<!-- runnable: NAME -->``, with
optionally ``needs VAR ...`` after the name: the environment variables a Python block reads
(the README tells the user how to set each, e.g. ``KEY=$(make -s api-key)``). NAME is unique
across the READMEs; ``install`` names the one block that installs a user's own project.

Pointing a block at a stack rewrites what stands for `make run` and for the user's clone, and
nothing else: make run's default addresses (``127.0.0.1:<port>``), the ``make -s api-key`` /
``make -s token USER=<user>`` commands (to the devtools commands make would run, for the
stack's own folder) and ``~/meshcast`` (the clone: this repository).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
READMES = (ROOT / "README.md", *sorted(ROOT.glob("services/*/README.md")))
INSTALL = "install"

# make run's ports (libs/devtools/src/meshcast/devtools/__main__.py): its flag and default, by name.
MAKE_RUN_PORTS: Mapping[str, tuple[str, int]] = {
    "nats": ("--nats-port", 4222),
    "gateway": ("--port", 8000),
    "history": ("--history-port", 8090),
    "presence": ("--presence-port", 8091),
    "events": ("--events-port", 8094),
    "auth": ("--auth-port", 8092),
    "grpc": ("--grpc-port", 9090),
    "api": ("--api-port", 9000),
    "api-grpc": ("--api-grpc-port", 10000),
    "api-health": ("--api-health-port", 8093),
}

_MARK = re.compile(r"^<!--\s*runnable\b", flags=re.M)
_BLOCK = re.compile(
    r"^<!--\s*runnable(?::\s*(?P<hint>[^>]*?))?\s*-->\n```(?P<lang>[^\n]*)\n(?P<code>.*?)^```\s*$",
    flags=re.S | re.M,
)
_ADDRESS = re.compile(r"\b127\.0\.0\.1:(\d+)(?!\d)")
_MAKE_API_KEY = re.compile(r"\bmake -s (?:-C \S+ )?api-key\b")
_MAKE_TOKEN = re.compile(r"\bmake -s (?:-C \S+ )?token USER=([\w-]+)")
_CLONE = "~/meshcast"


@dataclass(frozen=True)
class Block:
    """One runnable code block: where it is, its language, what it needs, its text."""

    name: str
    path: Path
    line: int
    lang: str
    needs: tuple[str, ...]
    code: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


@dataclass(frozen=True)
class Target:
    """What a block is pointed at: the stack's folder, ports and the devtools to ask it."""

    root: Path
    ports: Mapping[str, int]
    python: str

    def devtools(self, *args: str) -> str:
        """The shell command `make` would run for this stack's folder."""
        return shlex.join([self.python, "-m", "meshcast.devtools", "--root", str(self.root), *args])


def marks(path: Path) -> int:
    """How many runnable marks `path` holds (each must head a block)."""
    return len(_MARK.findall(path.read_text()))


def blocks(path: Path) -> list[Block]:
    text = path.read_text()
    found = []
    for match in _BLOCK.finditer(text):
        words = (match["hint"] or "").split()
        name = words[0] if words and words[0] != "needs" else ""
        rest = words[1:] if name else words
        if rest and rest[0] != "needs":
            raise ValueError(f"{path}: bad runnable hint {match['hint']!r} (NAME [needs VAR ...])")
        line = text.count("\n", 0, match.start()) + 2  # the fence's line
        found.append(
            Block(
                name=name or f"{path.parent.name}-{line}",
                path=path,
                line=line,
                lang=match["lang"].strip(),
                needs=tuple(rest[1:]),
                code=match["code"],
            )
        )
    return found


def collect() -> list[Block]:
    found = [block for path in READMES for block in blocks(path)]
    names = [block.name for block in found]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"runnable blocks named twice: {duplicates}")
    return found


def pointed(block: Block, target: Target) -> str:
    """The block's text with make run's addresses, make's commands and the clone pointed at `target`."""
    by_default = {default: target.ports[name] for name, (_, default) in MAKE_RUN_PORTS.items()}

    def address(match: re.Match[str]) -> str:
        port = int(match[1])
        return f"127.0.0.1:{by_default.get(port, port)}"

    code = _ADDRESS.sub(address, block.code).replace(_CLONE, shlex.quote(str(ROOT)))
    if block.lang == "sh":
        code = _MAKE_API_KEY.sub(lambda _: target.devtools("api-key"), code)
        code = _MAKE_TOKEN.sub(lambda m: target.devtools("token", "--user", m[1]), code)
    return code
