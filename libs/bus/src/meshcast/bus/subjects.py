"""Every NATS subject Meshcast uses, built and parsed here and nowhere else.

A channel name becomes one subject token by an injective, reversible
escaping: ASCII letters, digits, ``-`` and ``_`` stay as they are; every
other byte of the name's UTF-8 form becomes ``~XX`` (upper-case hex), and the
empty name becomes a lone ``~``. So no ``.``, ``*``, ``>``, whitespace or
control character from a client ever reaches a subject, and two channels
never share one.

Layout (``<p>`` is the configurable prefix, ``meshcast`` by default):

- ``<p>.live.<ns>.<channel>``: what gateways fan out; backends publish here.
- ``<p>.in.<ns>.<channel>``: input of namespaces with history (captured by
  the namespace's JetStream stream, which republishes to the live subject).
- ``<p>.removed.<ns>.<channel>``: the channel's removal markers, written by
  the history service only (captured by the same stream, never republished):
  the sequence of the newest one is where the channel's history was removed.
- ``<p>.control``: commands to every gateway (disconnect, unsubscribe).
- ``<p>.history.v1.<method>``: the history service's request/reply API.
- ``<p>.node.v1.<channels|info>``: scatter-gather requests (no queue group;
  protobuf ``meshcast.node.v1``) for the server API's ``channels`` (every
  gateway answers) and ``info`` (every gateway and every service, the API
  replicas included, answers one ``NodeInfo``).
- ``<p>.proxy.v1.<connect|refresh|subscribe|publish>``: decisions delegated
  to a backend (protobuf ``meshcast.proxy.v1``).
- ``<p>.rpc.<method>``: clients' rpc calls, answered by any backend.
- ``<p>.presence.v1.events.<ns>.<channel>``: joins and leaves (protobuf
  ``meshcast.presence.v1.PresenceEvent``); ``<p>.presence.v1.heartbeat``,
  ``<p>.presence.v1.sync[.<gateway>]``, ``<p>.presence.v1.query``: how
  gateways and presence instances keep membership; ``epoch.<gateway>.<n>``
  keys in the presence lease bucket decide how a gateway's epoch ended.
- ``<p>.events.v1.<kind>[.<ns>.<channel>]``: lifecycle events (protobuf
  ``meshcast.events.v1.Event``), one subject per kind, then namespace and
  channel for the kinds that have one (`CHANNEL_EVENT_KINDS`). All stored in
  the JetStream stream ``MESHCAST_EVENTS`` (owned by the events service);
  gateways publish only `GATEWAY_EVENT_KINDS`, presence only
  ``gateway_expired``, the events service the announcements it derives.
- ``<p>.events.v1.dead.<kind>[.<ns>.<channel>]``: an event the webhook
  relay (``services/webhooks``) gave up on, the original protobuf with the
  last error in headers. In the same stream (it captures
  ``<p>.events.v1.>``) but not an event: readers of the events take
  `event_filters` (one filter per kind), never the stream's ``>``.

A namespace with history has one JetStream stream, ``MESHCAST_HISTORY_<ns>``,
capturing ``<p>.in.<ns>.*`` and ``<p>.removed.<ns>.*`` and republishing each
stored input message to the matching live subject. The events service keeps
its derived state (see ``services/events``) in the KV bucket
``MESHCAST_EVENTS_LEDGER``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from .channels import namespace_of

_PLAIN: Final = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
_EMPTY: Final = "~"
_HEX: Final = "0123456789ABCDEF"
_TOKEN_RE: Final = re.compile(r"(?:[A-Za-z0-9_-]|~[0-9A-F]{2})+|~")
_PREFIX_RE: Final = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")

# Lifecycle event kinds (the `kind` oneof of meshcast.events.v1.Event), by subject shape.
CHANNEL_EVENT_KINDS: Final = ("subscribe", "unsubscribe", "publication", "channel_occupied", "channel_vacated")
EVENT_KINDS: Final = ("connect", "disconnect", "gateway_expired", *CHANNEL_EVENT_KINDS)
# What a gateway publishes about its own clients (its NATS user may publish nothing else there).
GATEWAY_EVENT_KINDS: Final = ("connect", "disconnect", "subscribe", "unsubscribe", "publication")
# What the events service announces: for dead gateways, and the channel transitions.
ANNOUNCED_EVENT_KINDS: Final = ("disconnect", "unsubscribe", "channel_occupied", "channel_vacated")
# The events service's KV bucket: its checkpointed ledger.
EVENTS_LEDGER_BUCKET: Final = "MESHCAST_EVENTS_LEDGER"


# The longest token a name may escape to. nats-server refuses a protocol line
# over its max_control_line (4 KiB by default) and nats-py then closes the
# connection for good: with the prefix, the kind and a reply inbox, a subject
# must stay well under it.
MAX_TOKEN_LENGTH: Final = 2048


def fits_token(name: str) -> bool:
    """Whether `name` escapes to at most MAX_TOKEN_LENGTH characters."""
    raw = name.encode("utf-8", "surrogatepass")
    return len(raw) + 2 * sum(1 for byte in raw if byte not in _PLAIN) <= MAX_TOKEN_LENGTH


def encode_token(name: str) -> str:
    """`name` as one subject token (see the module docstring)."""
    if not name:
        return _EMPTY
    out: list[str] = []
    for byte in name.encode("utf-8", "surrogatepass"):
        if byte in _PLAIN:
            out.append(chr(byte))
        else:
            out.append("~" + _HEX[byte >> 4] + _HEX[byte & 15])
    return "".join(out)


def decode_token(token: str) -> str:
    """The name `token` encodes; ValueError for a token no name encodes to."""
    if token == _EMPTY:
        return ""
    if not _TOKEN_RE.fullmatch(token):
        raise ValueError(f"not a channel token: {token!r}")
    raw = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "~":
            raw.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.append(ord(token[i]))
            i += 1
    return bytes(raw).decode("utf-8", "surrogatepass")


@dataclass(frozen=True, slots=True)
class Subjects:
    """Subject names under one prefix."""

    prefix: str = "meshcast"
    namespace_separator: str = ":"

    def __post_init__(self) -> None:
        if not _PREFIX_RE.fullmatch(self.prefix):
            raise ValueError(f"invalid subject prefix: {self.prefix!r}")

    def live(self, channel: str) -> str:
        return self._channel_subject("live", channel)

    def input(self, channel: str) -> str:
        return self._channel_subject("in", channel)

    def removal(self, channel: str) -> str:
        """Where the history service marks a removal of `channel`'s history."""
        return self._channel_subject("removed", channel)

    def removal_wildcard(self, namespace: str) -> str:
        """Every removal marker subject of one namespace (its history stream captures it)."""
        return f"{self.prefix}.removed.{encode_token(namespace)}.*"

    def removals(self) -> str:
        """Every removal marker subject (only the history service may publish there)."""
        return f"{self.prefix}.removed.>"

    def live_wildcard(self) -> str:
        return f"{self.prefix}.live.>"

    def input_wildcard(self, namespace: str) -> str:
        """Every input subject of one namespace (a history stream captures it)."""
        return f"{self.prefix}.in.{encode_token(namespace)}.*"

    def live_republish(self, namespace: str) -> str:
        """RePublish destination of a namespace's stream (its input token kept)."""
        return f"{self.prefix}.live.{encode_token(namespace)}.{{{{wildcard(1)}}}}"

    @property
    def control(self) -> str:
        return f"{self.prefix}.control"

    def presence_events(self, channel: str) -> str:
        return self._channel_subject("presence.v1.events", channel)

    def presence_events_wildcard(self) -> str:
        return f"{self.prefix}.presence.v1.events.>"

    @property
    def presence_heartbeat(self) -> str:
        return f"{self.prefix}.presence.v1.heartbeat"

    def presence_sync(self, gateway: str | None = None) -> str:
        base = f"{self.prefix}.presence.v1.sync"
        return base if gateway is None else f"{base}.{encode_token(gateway)}"

    @property
    def presence_query(self) -> str:
        return f"{self.prefix}.presence.v1.query"

    @staticmethod
    def presence_lease(gateway: str, epoch: int) -> str:
        """The presence lease-bucket key deciding how `gateway`'s `epoch` ended (expired
        or resumed). KV keys allow no ``~``: the token's escapes use ``=`` instead."""
        return f"epoch.{encode_token(gateway).replace('~', '=')}.{epoch}"

    def rpc(self, method: str) -> str:
        """Where backends answer a client's rpc `method` (escaped into one token)."""
        return f"{self.prefix}.rpc.{encode_token(method)}"

    def proxy(self, method: str) -> str:
        """Where a backend answers the gateway's connect/refresh/subscribe/publish decisions."""
        return f"{self.prefix}.proxy.v1.{method}"

    def history_api(self, method: str) -> str:
        return f"{self.prefix}.history.v1.{method}"

    def node_api(self, method: str) -> str:
        """Where a scatter-gather `method` is answered: ``channels`` by every gateway,
        ``info`` by every gateway and service."""
        return f"{self.prefix}.node.v1.{method}"

    def node_api_wildcard(self) -> str:
        return f"{self.prefix}.node.v1.*"

    def stream_name(self, namespace: str) -> str:
        """The history stream of `namespace` (namespace names are stream-safe)."""
        return f"{self._stream_prefix()}_HISTORY_{encode_token(namespace)}"

    @property
    def events_stream(self) -> str:
        """The stream of lifecycle events: ``MESHCAST_EVENTS`` under the default prefix."""
        return f"{self._stream_prefix()}_EVENTS"

    def _stream_prefix(self) -> str:
        return self.prefix.upper().replace(".", "_").replace("-", "_")

    def event(self, kind: str, channel: str | None = None) -> str:
        """The subject of one lifecycle event: `channel` is required exactly for the
        kinds that have one (`CHANNEL_EVENT_KINDS`)."""
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind: {kind!r}")
        if (kind in CHANNEL_EVENT_KINDS) != (channel is not None):
            raise ValueError(f"event kind {kind!r} {'needs' if channel is None else 'takes no'} channel")
        if channel is None:
            return f"{self.prefix}.events.v1.{kind}"
        return self._channel_subject(f"events.v1.{kind}", channel)

    def events_wildcard(self, kind: str | None = None) -> str:
        """Every event subject, or every one of `kind`."""
        if kind is None:
            return f"{self.prefix}.events.v1.>"
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind: {kind!r}")
        return f"{self.prefix}.events.v1.{kind}" + (".>" if kind in CHANNEL_EVENT_KINDS else "")

    def event_filters(self, kinds: tuple[str, ...] = EVENT_KINDS) -> list[str]:
        """One consumer filter per kind of `kinds`: the events, without the dead letters
        that share their stream (a consumer's ``filter_subjects``)."""
        return [self.events_wildcard(kind) for kind in kinds]

    def dead_letter(self, kind: str, channel: str | None = None) -> str:
        """Where the webhook relay stores an event of `kind` it gave up on."""
        return self.event(kind, channel).replace(f"{self.prefix}.events.v1.", f"{self.prefix}.events.v1.dead.", 1)

    def dead_letters_wildcard(self) -> str:
        return f"{self.prefix}.events.v1.dead.>"

    def event_of(self, subject: str) -> tuple[str, str | None]:
        """The kind and channel (None for kinds without one) of an event subject;
        ValueError for any other subject."""
        head = f"{self.prefix}.events.v1."
        if not subject.startswith(head):
            raise ValueError(f"not an event subject: {subject!r}")
        kind, *rest = subject[len(head) :].split(".")
        if kind not in EVENT_KINDS or len(rest) != (2 if kind in CHANNEL_EVENT_KINDS else 0):
            raise ValueError(f"not an event subject: {subject!r}")
        if not rest:
            return kind, None
        channel = decode_token(rest[1])
        if encode_token(namespace_of(channel, self.namespace_separator)) != rest[0]:
            raise ValueError(f"namespace token does not match channel: {subject!r}")
        return kind, channel

    def _channel_subject(self, kind: str, channel: str) -> str:
        ns = namespace_of(channel, self.namespace_separator)
        return f"{self.prefix}.{kind}.{encode_token(ns)}.{encode_token(channel)}"

    def channel_of(self, subject: str) -> str:
        """The channel of a live, input or removal subject; ValueError for any other."""
        head = self.prefix + "."
        if not subject.startswith(head):
            raise ValueError(f"subject outside prefix: {subject!r}")
        parts = subject[len(head) :].split(".")
        if len(parts) != 3 or parts[0] not in ("live", "in", "removed"):
            raise ValueError(f"not a channel subject: {subject!r}")
        channel = decode_token(parts[2])
        if encode_token(namespace_of(channel, self.namespace_separator)) != parts[1]:
            raise ValueError(f"namespace token does not match channel: {subject!r}")
        return channel
