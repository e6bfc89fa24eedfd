"""Scripted sessions as data: what a client (or a backend) sends, and what it waits for.

A `Session` is a list of steps, the same for both servers. Sending steps carry
frames (a command as the JSON protocol spells it, several in one frame, or raw
bytes); waiting steps (`Reply`, `Push`, `Closed`, `Quiet`, `Api`) record what
arrived under a label, and the two servers' records are compared
(`compare.py`). Nothing here asserts a value: the reference is Centrifugo.

Frames may hold placeholders filled in at run time, per server: `Token` (a JWT
minted just before sending), `Var` (a value an earlier reply captured, such as
an epoch or an offset) and ``{u}`` in any string (a suffix unique to the run,
so sessions never share a channel; it is put back as ``{u}`` in the records).

`Script` builds the step list with command ids numbered per client.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshcast.protocol import Format

BOTH = (Format.JSON, Format.PROTOBUF)
# A well-formed HMAC key that neither server trusts.
OTHER_SECRET = "another-secret-0123456789abcdef-0123456789"


@dataclass(frozen=True)
class Token:
    """A JWT minted with the servers' HMAC secret (or `secret`) when the frame is sent.

    `channel` makes it a subscription token; `ttl` may be negative (expired)."""

    user: str
    ttl: float = 3600
    channel: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)
    secret: str | None = None
    # Without an `exp` claim at all (not merely a past one).
    no_exp: bool = False


@dataclass(frozen=True)
class Var:
    """A value a `Reply` or `Api` captured earlier in the same run (`default` if none was)."""

    name: str
    default: Any = ""


@dataclass(frozen=True)
class At:
    """A Unix time `seconds` from when the frame is sent (``expire_at`` and the like)."""

    seconds: float


@dataclass(frozen=True)
class Raw:
    """A frame sent exactly as given: str as a text message, bytes as a binary one."""

    data: str | bytes


Frame = Mapping[str, Any] | list[Mapping[str, Any]] | Raw


@dataclass(frozen=True)
class Open:
    """A WebSocket to the server (no connect command yet). `pong`: answer server pings."""

    client: str
    pong: bool = True


@dataclass(frozen=True)
class Send:
    client: str
    frame: Frame


@dataclass(frozen=True)
class Reply:
    """Wait for the reply to command `id`; `capture` names values in it (`Var`) by path."""

    client: str
    id: int
    capture: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Push:
    """Wait for the client's next push (a reply without an id); `capture` as in `Reply`.

    With `count` > 1, the next `count` pushes as one list, in channel order: a channel's
    pushes keep their order, pushes of different channels have none to keep."""

    client: str
    capture: Mapping[str, str] = field(default_factory=dict)
    count: int = 1


@dataclass(frozen=True)
class Closed:
    """Wait for the server to close the WebSocket: its close code and reason."""

    client: str


@dataclass(frozen=True)
class Quiet:
    """Whatever the client gets within `seconds` (normally nothing)."""

    client: str
    seconds: float = 0.3


@dataclass(frozen=True)
class Ping:
    """Wait for a server ping (an empty reply); answered unless the client was opened with pong=False."""

    client: str


@dataclass(frozen=True)
class Close:
    """The client closes the WebSocket politely."""

    client: str


@dataclass(frozen=True)
class Api:
    """A server API call over HTTP: ``POST /api/<method>`` (headers: the key unless given)."""

    method: str
    body: Mapping[str, Any] | bytes | None = None
    headers: Mapping[str, str] | None = None
    verb: str = "POST"
    capture: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Sleep:
    seconds: float


Step = Open | Send | Reply | Push | Closed | Quiet | Ping | Close | Api | Sleep


@dataclass(frozen=True)
class Session:
    """One scripted session; `short` ones also run in ``make test``."""

    name: str
    steps: tuple[Step, ...]
    formats: tuple[Format, ...] = BOTH
    short: bool = False
    about: str = ""


class Script:
    """Builds a step list; command ids count per client from 1 (connect is usually 1)."""

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self._ids: Counter[str] = Counter()

    def next_id(self, client: str) -> int:
        self._ids[client] += 1
        return self._ids[client]

    def open(self, client: str, *, pong: bool = True) -> Script:
        self.steps.append(Open(client, pong))
        return self

    def connect(self, client: str, user: str = "alice", **request: Any) -> Script:
        """Open, then connect with a fresh token for `user` (unless `request` names one)."""
        self.open(client)
        request.setdefault("token", Token(user))
        return self.call(client, "connect", **request)

    def call(self, client: str, command: str, /, capture: Mapping[str, str] | None = None, **body: Any) -> Script:
        """One command and its reply."""
        cmd_id = self.next_id(client)
        self.steps.append(Send(client, {"id": cmd_id, command: body}))
        self.steps.append(Reply(client, cmd_id, capture or {}))
        return self

    def send(self, client: str, frame: Frame) -> Script:
        self.steps.append(Send(client, frame))
        return self

    def reply(self, client: str, cmd_id: int, capture: Mapping[str, str] | None = None) -> Script:
        self.steps.append(Reply(client, cmd_id, capture or {}))
        return self

    def push(self, client: str, capture: Mapping[str, str] | None = None) -> Script:
        self.steps.append(Push(client, capture or {}))
        return self

    def pushes(self, client: str, count: int) -> Script:
        """The next `count` pushes, of several channels (see `Push`)."""
        self.steps.append(Push(client, {}, count))
        return self

    def closed(self, client: str) -> Script:
        self.steps.append(Closed(client))
        return self

    def quiet(self, client: str, seconds: float = 0.3) -> Script:
        self.steps.append(Quiet(client, seconds))
        return self

    def ping(self, client: str) -> Script:
        self.steps.append(Ping(client))
        return self

    def close(self, client: str) -> Script:
        self.steps.append(Close(client))
        return self

    def api(self, method: str, body: Mapping[str, Any] | bytes | None = None, **options: Any) -> Script:
        """A server API call; without a body, ``{}`` (none at all for GET)."""
        if body is None and options.get("verb", "POST") != "GET":
            body = {}
        self.steps.append(Api(method, body, **options))
        return self

    def sleep(self, seconds: float) -> Script:
        self.steps.append(Sleep(seconds))
        return self

    def session(
        self, name: str, *, formats: tuple[Format, ...] = BOTH, short: bool = False, about: str = ""
    ) -> Session:
        return Session(name, tuple(self.steps), formats, short, about)
