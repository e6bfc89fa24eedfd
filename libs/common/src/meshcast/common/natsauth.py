"""Who may publish and subscribe what on NATS: one user per Meshcast service.

Each service connects as its own NATS user (credentials in its
``MESHCAST_NATS_URL``: ``nats://gateway:<password>@host:4222``) and gets only
the subjects it uses. :func:`permissions` is the model, derived from the
subject layout of :mod:`meshcast.bus.subjects`; :func:`render_authorization`
turns it into nats-server's ``authorization { users = [...] }`` block. `make
run`, the test harness and the compose/Kubernetes NATS configs all use that
block (``python -m meshcast.devtools nats-config --write`` refreshes the
deployment copies; ``tests/deploy`` fails when they drift).

Users:

- ``gateway``: publishes to live and input subjects (a JetStream publish is a
  plain publish whose ack comes back on the inbox), its own lifecycle events
  (connect, disconnect, subscribe, unsubscribe, publication: never the
  events service's channel transitions nor presence's gateway expiries),
  presence events and heartbeats, requests to the history reads, presence queries, the backends'
  delegated decisions (``<p>.proxy.v1.*``) and ``<p>.rpc.>``; answers presence
  snapshot requests and the server API's ``<p>.node.v1.*`` scatter-gather;
  reads and watches the revocation KV bucket (an ordered consumer, and its
  flow control). No JetStream management: it cannot create,
  update, purge or delete a stream, write a KV bucket, remove history or send
  control commands.
- ``history``: the JetStream API (it creates and updates the history streams,
  reads them with direct gets, purges a channel on ``remove``), the removal
  markers (``<p>.removed.>``, stored in the history streams), its request
  subjects, ``<p>.node.v1.info`` and the NATS micro discovery subjects
  (``$SRV.>``). It still cannot
  delete a stream, touch the KV buckets of the other services or the events
  stream, or use the account/server/meta-group APIs.
- ``presence``: gateway presence traffic, its query subject, snapshot
  requests to gateways, leave events of dead gateways, the
  ``gateway_expired`` lifecycle event, its own lease KV bucket and
  ``<p>.node.v1.info``.
- ``events``: the events service (``services/events``) owns the stream
  ``MESHCAST_EVENTS``: it creates, updates and may purge it (no other user
  may purge it, and nobody, its owner included, may delete it), reads it with
  an ordered consumer, publishes what it announces (the disconnects and
  unsubscribes of dead gateways, channel occupied/vacated) and keeps its
  ledger in its own KV bucket.
- ``webhooks``: the webhook relay (``services/webhooks``): reads
  ``MESHCAST_EVENTS`` through durable consumers of its own (create, fetch,
  ack: `_stream_reader`, nothing that changes the stream) and publishes its
  dead letters (``<p>.events.v1.dead.>``, stored in that stream) and the
  answers to ``<p>.node.v1.info``; no other subject, no event of its own.
- ``auth``: its revocation KV bucket (create, reconfigure, write, purge) and
  ``<p>.control``. Its API is gRPC: the only NATS request it answers is
  ``<p>.node.v1.info``.
- ``api``: the server API service (``services/api``): publishes to live and
  input subjects (JetStream publishes whose acks come back on its inbox) and
  control, requests the history reads and ``remove``, presence queries and
  the scatter-gathers (``<p>.node.v1.*``), and reads the presence heartbeats
  (which gateways are alive). The only request it answers is
  ``<p>.node.v1.info`` (as every service does); it never answers
  ``channels`` and has no JetStream API.
- ``backend``: for applications (make run prints its URL): publish to live
  and input subjects and control, the history and presence requests, presence
  events; it answers the gateways' ``<p>.proxy.v1.*`` requests. Of the
  JetStream API only what reading ``MESHCAST_EVENTS`` takes: stream info,
  message gets, creating (durable or not), reading, acking and deleting
  consumers on it; it may also listen to the event subjects live.

Removal markers: only ``history`` may publish to ``<p>.removed.>``; every
other user has it denied outright (a marker makes every earlier position of a
channel unrecoverable, so a forged one would be a denial of recovery).

Inboxes: each user subscribes to its own ``_INBOX_<user>.>`` only (replies to
its requests, JetStream acks, KV watch deliveries), so no user reads the
replies another gets. Its clients connect with that inbox prefix
(:func:`inbox_prefix`; ``MESHCAST_NATS_INBOX_PREFIX`` for the services,
``connect(..., inbox_prefix="_INBOX_backend")`` for backends); nats-py's
default ``_INBOX`` and every other user's prefix are denied outright, so a
wildcard allowed later cannot reopen them. Nobody may publish to an inbox
either, except a responder to the reply subject of a request it received:
services that answer requests get ``allow_responses`` with no message limit
(presence answers and gateway snapshots come in several chunks); nats-server
reads ``max: -1`` as unlimited (``0`` would mean its default, one).

Passwords end up in URLs and, in compose/Kubernetes, in nats-server
``$VARIABLE`` references, which nats-server parses as config values (``123``
would become a number): :func:`check_password` allows letters, digits, ``-``
and ``_``, starting with a letter.
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from meshcast.bus.subjects import ANNOUNCED_EVENT_KINDS, EVENTS_LEDGER_BUCKET, GATEWAY_EVENT_KINDS, Subjects

GATEWAY: Final = "gateway"
HISTORY: Final = "history"
PRESENCE: Final = "presence"
AUTH: Final = "auth"
BACKEND: Final = "backend"
API: Final = "api"
EVENTS: Final = "events"
WEBHOOKS: Final = "webhooks"
USERS: Final = (GATEWAY, HISTORY, PRESENCE, AUTH, BACKEND, API, EVENTS, WEBHOOKS)

# KV buckets (their streams are KV_<bucket>): the presence service's leases
# and the auth service's revocations.
PRESENCE_LEASES_BUCKET: Final = "MESHCAST_PRESENCE_LEASES"
REVOCATIONS_BUCKET: Final = "MESHCAST_REVOCATIONS"
# nats-py's default inbox prefix: shared by every client that keeps it, so nobody may use it.
DEFAULT_INBOX_PREFIX: Final = "_INBOX"
# The history service's read methods (the gateway's requests); `remove` is not one.
HISTORY_READS: Final = ("position", "recover", "history")

_PASSWORD_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_-]{15,}")
_ENV_NAME_RE: Final = re.compile(r"[A-Z_][A-Z0-9_]*")

# JetStream APIs no Meshcast service uses: account purge, peer removal,
# meta-group leader moves, stream deletion.
_ADMIN_APIS: Final = (
    "$JS.API.STREAM.DELETE.>",
    "$JS.API.ACCOUNT.>",
    "$JS.API.SERVER.>",
    "$JS.API.META.>",
)
# Every JetStream API that changes a stream or its messages.
_STREAM_WRITES: Final = (
    "$JS.API.STREAM.CREATE.>",
    "$JS.API.STREAM.UPDATE.>",
    "$JS.API.STREAM.PURGE.>",
    "$JS.API.STREAM.MSG.DELETE.>",
    "$JS.API.STREAM.RESTORE.>",
    "$JS.API.STREAM.SNAPSHOT.>",
    "$JS.API.STREAM.PEER.>",
    "$JS.API.STREAM.LEADER.>",
)


@dataclass(frozen=True, slots=True)
class Permissions:
    """One NATS user's subject permissions (deny wins over allow)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()
    subscribe_deny: tuple[str, ...] = ()
    # May publish any number of replies to the requests it received (allow_responses).
    responds: bool = False


@dataclass(frozen=True, slots=True)
class EnvPassword:
    """A password nats-server reads from an environment variable (``$NAME``)."""

    name: str

    def __post_init__(self) -> None:
        if not _ENV_NAME_RE.fullmatch(self.name):
            raise ValueError(f"invalid environment variable name: {self.name!r}")


Password = str | EnvPassword


def password_env(user: str) -> str:
    """The environment variable of `user`'s password in the deployment configs."""
    return f"NATS_{user.upper()}_PASSWORD"


def env_passwords(users: tuple[str, ...] = USERS) -> dict[str, Password]:
    """Every user's password as a ``$NATS_<USER>_PASSWORD`` reference."""
    return {user: EnvPassword(password_env(user)) for user in users}


def check_password(password: str) -> str:
    """`password` if it is safe in a URL and a nats-server variable; ValueError otherwise."""
    if not _PASSWORD_RE.fullmatch(password):
        raise ValueError(
            "a NATS password must be at least 16 characters of letters, digits, '-' and '_', starting with a letter"
        )
    return password


def generate_password(length: int = 32) -> str:
    """A random password that :func:`check_password` accepts."""
    alphabet = string.ascii_letters + string.digits
    return secrets.choice(string.ascii_letters) + "".join(secrets.choice(alphabet) for _ in range(length - 1))


def inbox_prefix(user: str) -> str:
    """`user`'s inbox prefix (nats-py's ``inbox_prefix``): ``_INBOX_<user>``."""
    return f"{DEFAULT_INBOX_PREFIX}_{user}"


def inbox(user: str) -> str:
    """The subjects of `user`'s inboxes: ``_INBOX_<user>.>``."""
    return f"{inbox_prefix(user)}.>"


def _foreign_inboxes(user: str) -> tuple[str, ...]:
    """Every inbox but `user`'s: the shared default and the other users'."""
    return (f"{DEFAULT_INBOX_PREFIX}.>", *(inbox(other) for other in USERS if other != user))


def _kv_reader(bucket: str) -> tuple[str, ...]:
    """Read and watch a KV bucket: stream info, gets, an ordered consumer and its flow control."""
    stream = f"KV_{bucket}"
    return (
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.*",
        f"$JS.API.CONSUMER.DELETE.{stream}.*",
        f"$JS.FC.{stream}.>",
    )


def _kv_owner(bucket: str) -> tuple[str, ...]:
    """Create, configure and write a KV bucket (and read it)."""
    stream = f"KV_{bucket}"
    return (
        f"$JS.API.STREAM.CREATE.{stream}",
        f"$JS.API.STREAM.UPDATE.{stream}",
        *_kv_reader(bucket),
        f"$KV.{bucket}.>",
    )


def _stream_reader(stream: str) -> tuple[str, ...]:
    """Read a stream through consumers of one's own (durable or not, push or pull) and gets."""
    return (
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.*",
        f"$JS.API.CONSUMER.INFO.{stream}.*",
        f"$JS.API.CONSUMER.DELETE.{stream}.*",
        f"$JS.API.CONSUMER.NAMES.{stream}",
        f"$JS.API.CONSUMER.LIST.{stream}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.*",
        f"$JS.ACK.{stream}.>",
        f"$JS.FC.{stream}.>",
    )


def permissions(subjects: Subjects | None = None) -> dict[str, Permissions]:
    """Each user's permissions under `subjects`' prefix."""
    s = subjects or Subjects()
    p = s.prefix
    live, inputs, control = s.live_wildcard(), f"{p}.in.>", s.control
    events, heartbeat, query = s.presence_events_wildcard(), s.presence_heartbeat, s.presence_query
    sync, sync_one = s.presence_sync(), f"{s.presence_sync()}.*"
    history_api = s.history_api("*")
    history_all = s.history_api(">")
    rpc = f"{p}.rpc.>"
    proxy = s.proxy("*")
    removals = s.removals()
    node = s.node_api_wildcard()
    node_info = s.node_api("info")
    other_buckets = tuple(
        f"$JS.API.STREAM.*.KV_{bucket}" for bucket in (PRESENCE_LEASES_BUCKET, REVOCATIONS_BUCKET, EVENTS_LEDGER_BUCKET)
    )
    events_stream = s.events_stream
    gateway_events = tuple(s.events_wildcard(kind) for kind in GATEWAY_EVENT_KINDS)
    announced = tuple(s.events_wildcard(kind) for kind in ANNOUNCED_EVENT_KINDS)
    expiries = s.event("gateway_expired")
    return {
        GATEWAY: Permissions(
            publish=(
                live,
                inputs,
                events,
                heartbeat,
                *(s.history_api(method) for method in HISTORY_READS),
                query,
                proxy,
                rpc,
                *gateway_events,
                *_kv_reader(REVOCATIONS_BUCKET),
            ),
            subscribe=(live, events, control, sync, sync_one, node, inbox(GATEWAY)),
            publish_deny=(*_ADMIN_APIS, *_STREAM_WRITES, "$KV.>", s.history_api("remove"), control, removals),
            # It must not pose as the history or presence service, or as a backend.
            subscribe_deny=(history_all, query, proxy, rpc, inputs, *_foreign_inboxes(GATEWAY)),
            responds=True,
        ),
        HISTORY: Permissions(
            publish=("$JS.API.>", removals),
            subscribe=(history_all, "$SRV.>", node_info, inbox(HISTORY)),
            # Nor the events stream: only its owner may change or purge it.
            publish_deny=(
                *_ADMIN_APIS,
                *other_buckets,
                f"$JS.API.STREAM.*.{events_stream}",
                f"$JS.API.STREAM.MSG.*.{events_stream}",
                "$KV.>",
            ),
            subscribe_deny=_foreign_inboxes(HISTORY),
            responds=True,
        ),
        PRESENCE: Permissions(
            publish=(events, sync, sync_one, expiries, *_kv_owner(PRESENCE_LEASES_BUCKET)),
            subscribe=(events, heartbeat, query, node_info, inbox(PRESENCE)),
            publish_deny=(*_ADMIN_APIS, removals),
            subscribe_deny=_foreign_inboxes(PRESENCE),
            responds=True,
        ),
        AUTH: Permissions(
            # Account info (KV per-key TTL support), and purging deleted keys (purge_deletes).
            publish=(
                control,
                "$JS.API.INFO",
                *_kv_owner(REVOCATIONS_BUCKET),
                f"$JS.API.STREAM.PURGE.KV_{REVOCATIONS_BUCKET}",
            ),
            subscribe=(node_info, inbox(AUTH)),
            publish_deny=(*_ADMIN_APIS, removals),
            subscribe_deny=_foreign_inboxes(AUTH),
            responds=True,
        ),
        BACKEND: Permissions(
            publish=(live, inputs, control, history_api, query, *_stream_reader(events_stream)),
            # It answers the gateways' delegated decisions (connect, refresh, subscribe, publish)
            # and may listen to channels (the publications every gateway fans out) and events.
            subscribe=(events, proxy, rpc, live, s.events_wildcard(), inbox(BACKEND)),
            publish_deny=(*_ADMIN_APIS, *_STREAM_WRITES, "$KV.>", removals),
            subscribe_deny=_foreign_inboxes(BACKEND),
            responds=True,
        ),
        API: Permissions(
            publish=(
                live,
                inputs,
                control,
                *(s.history_api(method) for method in (*HISTORY_READS, "remove")),
                query,
                node,
            ),
            subscribe=(heartbeat, node_info, inbox(API)),
            publish_deny=("$JS.API.>", "$KV.>", removals),
            # It must not pose as a gateway or a service answering requests.
            subscribe_deny=(s.node_api("channels"), history_all, query, proxy, rpc, *_foreign_inboxes(API)),
            responds=True,
        ),
        EVENTS: Permissions(
            publish=(
                *announced,
                f"$JS.API.STREAM.CREATE.{events_stream}",
                f"$JS.API.STREAM.UPDATE.{events_stream}",
                f"$JS.API.STREAM.PURGE.{events_stream}",
                *_stream_reader(events_stream),
                *_kv_owner(EVENTS_LEDGER_BUCKET),
            ),
            subscribe=(node_info, inbox(EVENTS)),
            publish_deny=(*_ADMIN_APIS, removals),
            subscribe_deny=_foreign_inboxes(EVENTS),
            responds=True,
        ),
        WEBHOOKS: Permissions(
            publish=(s.dead_letters_wildcard(), *_stream_reader(events_stream)),
            subscribe=(node_info, inbox(WEBHOOKS)),
            publish_deny=(*_ADMIN_APIS, *_STREAM_WRITES, "$KV.>", removals),
            subscribe_deny=_foreign_inboxes(WEBHOOKS),
            responds=True,
        ),
    }


def _quoted(value: str) -> str:
    if '"' in value or "\\" in value or "\n" in value:
        raise ValueError(f"cannot quote {value!r}")
    return f'"{value}"'


def _password_value(password: Password) -> str:
    if isinstance(password, EnvPassword):
        return f"${password.name}"
    return _quoted(check_password(password))


def render_authorization(passwords: Mapping[str, Password], subjects: Subjects | None = None) -> str:
    """nats-server's ``authorization { users = [...] }`` block for `passwords`' users.

    A password is a literal (`make run`, tests) or an :class:`EnvPassword`
    (compose, Kubernetes: the secret stays out of the file).
    """
    model = permissions(subjects)
    unknown = sorted(set(passwords) - set(model))
    if unknown:
        raise ValueError(f"no permissions for NATS users {unknown}")
    lines: list[str] = []

    def add(depth: int, text: str) -> None:
        lines.append("  " * depth + text)

    add(0, "authorization {")
    add(1, "users = [")
    for user in USERS:
        if user not in passwords:
            continue
        perms = model[user]
        add(2, "{")
        add(3, f"user: {_quoted(user)}")
        add(3, f"password: {_password_value(passwords[user])}")
        add(3, "permissions: {")
        for kind, allow, deny in (
            ("publish", perms.publish, perms.publish_deny),
            ("subscribe", perms.subscribe, perms.subscribe_deny),
        ):
            add(4, f"{kind}: {{")
            for key, listed in (("allow", allow), ("deny", deny)):
                if listed:
                    add(5, f"{key}: [")
                    for subject in listed:
                        add(6, _quoted(subject))
                    add(5, "]")
            add(4, "}")
        if perms.responds:
            # max -1: any number of replies (chunked answers) within the default 2 minutes.
            add(4, "allow_responses: { max: -1 }")
        add(3, "}")
        add(2, "}")
    add(1, "]")
    add(0, "}")
    return "\n".join(lines) + "\n"


def url_with_credentials(servers: str, user: str, password: str) -> str:
    """`servers` (comma-separated NATS URLs) with `user`'s credentials in each URL.

    nats-py sends the credentials of the URL it connects to, so every URL of
    the list carries them (servers a cluster advertises carry none: the
    deployments set ``no_advertise``).
    """
    check_password(password)
    out = []
    for url in servers.split(","):
        parts = urlsplit(url.strip())
        if not parts.hostname:
            raise ValueError(f"not a NATS URL: {url!r}")
        host = parts.netloc.rpartition("@")[2]
        out.append(urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}")))
    return ",".join(out)
