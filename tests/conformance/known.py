"""Every difference the suite knows of, each named, either intended or open (to fix).

A `Known` covers the diffs its `Where`s match: a session (by name, or ``*`` for one
that shows in most sessions), a path pattern (fnmatch: ``*`` spans ``/``) and,
where given, each side's value. A session's test fails on a diff nothing covers
(a new difference) and on a `Where` naming that session that covered nothing (a
difference that went away: fixed, so its entry goes too). ``docs/compatibility.md``
lists every id, the open ones under "Open differences (to fix)" with their frames.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Literal

from meshcast.protocol import Format

from .compare import MISSING, Diff
from .script import BOTH


class _Any:
    def __repr__(self) -> str:
        return "ANY"


ANY: Any = _Any()
JSON = (Format.JSON,)
PROTOBUF = (Format.PROTOBUF,)
EVERY = "*"


@dataclass(frozen=True)
class Where:
    sessions: tuple[str, ...] | str
    paths: tuple[str, ...]
    centrifugo: Any = ANY
    meshcast: Any = ANY
    formats: tuple[Format, ...] = BOTH
    # For a `Where` of every session: the one session it must match in (so it cannot outlive a fix).
    witness: str | None = None

    def names(self, session: str) -> bool:
        return self.sessions == EVERY or session in self.sessions

    def must_show_in(self, session: str, fmt: Format) -> bool:
        named = session in self.sessions if isinstance(self.sessions, tuple) else session == self.witness
        return named and fmt in self.formats

    def covers(self, session: str, fmt: Format, diff: Diff) -> bool:
        return (
            self.names(session)
            and fmt in self.formats
            and any(fnmatch.fnmatchcase(diff.path, p) for p in self.paths)
            and _value_matches(self.centrifugo, diff.centrifugo)
            and _value_matches(self.meshcast, diff.meshcast)
        )


def _value_matches(expected: Any, actual: Any) -> bool:
    if expected is ANY:
        return True
    if expected is str:
        return isinstance(actual, str)
    return bool(expected is actual if expected is MISSING else expected == actual and actual is not MISSING)


@dataclass(frozen=True)
class Known:
    id: str
    kind: Literal["intended", "open"]
    summary: str
    where: tuple[Where, ...]


def _w(sessions: tuple[str, ...] | str, *paths: str, **values: Any) -> Where:
    return Where(sessions, paths, **values)


INTENDED = [
    Known(
        "connect-node",
        "intended",
        "The connect result names the gateway (`node`, a field of the schema); Centrifugo leaves it out.",
        (_w(EVERY, "*#*/connect/node", centrifugo=MISSING, meshcast="<node>", witness="connect"),),
    ),
    Known(
        "refresh-result-fields",
        "intended",
        "The refresh result also carries `client` and `version` (fields of the schema); Centrifugo sends "
        "`expires` and `ttl` only.",
        (_w(("refresh",), "a#2/refresh/client", "a#2/refresh/version", centrifugo=MISSING),),
    ),
    Known(
        "error-message-text",
        "intended",
        "Error replies with a message of their own (`subscription token required`, `channel required`...) where "
        "Centrifugo sends the code's standard text; the codes are compared on their own.",
        (_w(EVERY, "*/error/message", centrifugo=str, meshcast=str, witness="rpc_without_backend"),),
    ),
    Known(
        "close-reason-text",
        "intended",
        "The 1009 close frame says which limit was exceeded; Centrifugo's has an empty reason.",
        (_w(("message_too_big",), "a#2/closed/reason", "a.close/reason", centrifugo=""),),
    ),
    Known(
        "http-error-bodies",
        "intended",
        "Server API answers that are not 200 have empty bodies; Centrifugo's carry Go's status text "
        "(`404 page not found`, `Bad Request`). The statuses are the same.",
        (
            _w(
                ("api_http_errors",),
                "api4:frobnicate/body*",
                "api7:publish/body*",
                "api8:publish/body*",
                "api9:publish/body*",
                "api6:publish/body*",
            ),
            _w(("api_legacy_commands",), "api2:/body*"),
        ),
    ),
    Known(
        "info-nodes",
        "intended",
        "`info` lists every Meshcast process (the API, history, presence, each gateway) with process figures; "
        "Centrifugo lists its one node with client counts and metrics.",
        (
            _w(("api_info", "api_http_errors"), "api*:info/body/result/nodes/*"),
            _w(("grpc_api",), "grpc:Info/result/nodes/*"),
        ),
    ),
    Known(
        "ping-command",
        "intended",
        "A `ping` command (the schema's PingRequest) is answered; Centrifugo v6.9.1 closes the connection with "
        "3501, since its dispatcher gives the command no frame type (SDKs ping with empty frames instead).",
        (_w(("ping_command",), "a#2/*"),),
    ),
    Known(
        "token-exp-required",
        "intended",
        "A connection token without `exp` is refused (3500): every Meshcast connection ends or is refreshed "
        "(README, Tokens). Centrifugo accepts it as a connection that never expires.",
        (_w(("connect_token_without_exp",), "a#1/*", "a.frames/*"),),
    ),
    Known(
        "private-channel-needs-subscription",
        "intended",
        "`publish` and `history` in a `$` channel need a subscription made with a subscription token (103 "
        "otherwise); Centrifugo applies only the namespace's publish/history permissions to them.",
        (_w(("private_channel_without_token",), "a#3/*", "a#4/*"),),
    ),
    Known(
        "user-limited-everywhere",
        "intended",
        "A `#` channel admits only its users to publish and history too (README: user-limited channels admit "
        "only the users listed); Centrifugo checks them on subscribe only.",
        (
            _w(("user_limited_channel",), "c#3/*", "c#4/*", "a.push1/*", "a.unread/*"),
            _w(("history_permissions",), "a#3/*"),
        ),
    ),
    Known(
        "history-no-silent-gap",
        "intended",
        "`history` since a position that fell out of the window, or beyond the stream's end, is error 112 "
        "(README, history command: never a silent gap); Centrifugo answers what it still has.",
        (_w(("history_since_trimmed",), "a#11/*"), _w(("history_since_beyond_the_end",), "a#4/*")),
    ),
    Known(
        "history-count-limit",
        "intended",
        "A history answer holds as many publications as were asked for (negative: all retained) up to what fits "
        "in one reply (`MESHCAST_MAX_REPLY_BYTES`, README, history command); Centrifugo caps every answer at "
        "`history_max_publication_limit` (300).",
        (
            _w(
                ("history_over_the_publication_limit",),
                "a#2/history/publications/30?/*",
                "a#3/history/publications/30?/*",
                centrifugo=MISSING,
            ),
        ),
    ),
    Known(
        "utf8-channel-names",
        "intended",
        "Channel names may be any printable UTF-8 (only control characters and length are refused, README, edge "
        "limits); Centrifugo refuses non-ASCII names (107) in a namespace without channel_regex.",
        (_w(("channel_names",), "a#4/*"),),
    ),
    Known(
        "position-without-recovery",
        "intended",
        "In a namespace with history but without recovery a subscribe result carries the stream's `epoch` (and "
        "offset), as the README says of every history namespace; Centrifugo gives a position only to positioned "
        "or recovering subscriptions.",
        (
            _w(("subscribe_positions",), "a#3/*"),
            _w(("presence_not_enabled",), "a#2/*"),
            _w(("subscription_token_opens_closed_namespace",), "a#3/subscribe/epoch"),
        ),
    ),
    Known(
        "recover-needs-epoch",
        "intended",
        "A recovering subscribe without an epoch is not recovered (the client is told where the channel stands): "
        "without the epoch an offset cannot be proved to belong to the stream as it is now, and a stream made anew "
        "would be a silent hole. Centrifugo skips the epoch check when the client sends none.",
        (_w(("recover_without_epoch",), "a2#2/subscribe/*", "a2.push1/push/pub/offset"),),
    ),
]

OPEN: list[Known] = []

KNOWN = INTENDED + OPEN


def covering(session: str, fmt: Format, diff: Diff) -> tuple[Known, Where] | None:
    for known in KNOWN:
        for where in known.where:
            if where.covers(session, fmt, diff):
                return known, where
    return None
