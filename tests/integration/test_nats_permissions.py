"""Each service's NATS user can do its job and nothing more (meshcast.common.natsauth).

A real nats-server runs with the generated `authorization` block. A refused
publish or subscribe never reaches its target: nats-server answers with a
``Permissions Violation`` error (nats-py hands it to the error callback, and a
refused request simply gets no answer), so each denial below waits for that
error and then checks that nothing changed. Every connection uses its user's
inbox prefix (``_INBOX_<user>``), as the services do: replies, JetStream acks
and KV watches below all travel through those inboxes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import nats
import pytest
import websockets
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.js.api import StreamConfig
from nats.js.errors import KeyWrongLastSequenceError

from meshcast.auth.revocations import NatsRevocations
from meshcast.bus import Subjects, close, connect, publish
from meshcast.bus.requests import request_many
from meshcast.common.namespaces import ChannelsConfig, Namespace
from meshcast.common.natsauth import (
    API,
    AUTH,
    BACKEND,
    GATEWAY,
    HISTORY,
    PRESENCE,
    PRESENCE_LEASES_BUCKET,
    REVOCATIONS_BUCKET,
    USERS,
    generate_password,
    inbox_prefix,
    render_authorization,
    url_with_credentials,
)
from meshcast.gateway.revocations import RevocationWatch
from meshcast.history.store import HistoryStore
from meshcast.history.streams import ensure_streams, stream_specs
from meshcast.presence.app import LEASE_BUCKET
from meshcast.proto.auth_pb2 import DisconnectUserRequest, IssueConnectionTokenRequest, RevokeUserRequest
from meshcast.proto.auth_pb2_grpc import AuthServiceStub
from meshcast.proto.bus_pb2 import Control
from meshcast.testing import (
    NatsServer,
    ServiceProcess,
    auth_process,
    gateway_process,
    history_process,
    keyed_channel,
    presence_process,
    wait_until_async,
    within,
    ws_url,
)
from meshcast.tokens.revocations import BUCKET, user_key

from .harness import JsonClient

SUBJECTS = Subjects()
SECRET = "nats-permissions-secret-0123456789abcdef0123456789"
E2E_NAMESPACES = Path(__file__).resolve().parents[1] / "e2e" / "namespaces.yaml"
# A namespace with history, as the history service's stream of it is made.
CHAT = ChannelsConfig(namespaces=[Namespace(name="chat", history_size=10, history_ttl=60, recovery=True)])
CHAT_STREAM = SUBJECTS.stream_name("chat")
# Short: only denied requests wait for it, and they are cancelled at the violation.
JS_TIMEOUT = 2.0


class Peer:
    """One NATS connection as one user, with the server's errors it received."""

    def __init__(self, user: str, inboxes: str | None = None) -> None:
        self.user = user
        # Its user's inbox prefix, unless a test picks another.
        self.inboxes = inboxes or inbox_prefix(user)
        self.errors: list[str] = []
        self._nc: Nats | None = None

    @property
    def nc(self) -> Nats:
        assert self._nc is not None
        return self._nc

    async def connect(self, url: str) -> Peer:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc).lower())

        self._nc = await nats.connect(
            url, name=f"test-{self.user}", error_cb=on_error, allow_reconnect=False, inbox_prefix=self.inboxes
        )
        return self

    async def refused(
        self, action: Awaitable[Any], subject: str, kind: str = "publish", *, prefix: bool = False
    ) -> None:
        """`action` is refused: the server reports a permissions violation for `subject`.

        With `prefix`, for a subject starting with `subject` (a random inbox).
        """
        marker = f'permissions violation for {kind} to "{subject}{"" if prefix else chr(34)}'.lower()
        task = asyncio.ensure_future(action)
        try:
            await wait_until_async(lambda: any(marker in e for e in self.errors), what=f"{self.user}: {marker}")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def assert_no_violation(self) -> None:
        assert not [e for e in self.errors if "violation" in e], f"{self.user}: {self.errors}"

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()


async def subscribed(nc: Nats) -> None:
    """Returns once the server has every subscription `nc` made so far.

    One flush() is not enough: nats-py 2.16 writes its PING straight to the
    socket, ahead of commands still queued for its flusher task (a SUB just
    made), so the PONG may come back before the server has the subscription and
    a message published right then is lost. The second PING leaves after them.
    """
    await nc.flush()
    await nc.flush()


class PeerFactory(Protocol):
    def __call__(self, user: str, inboxes: str | None = None) -> Awaitable[Peer]: ...


@pytest.fixture
def passwords() -> dict[str, str]:
    return {user: generate_password() for user in USERS}


@pytest.fixture
def secured(tmp_path: Path, passwords: dict[str, str]) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats", authorization=render_authorization(passwords)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def peer(secured: NatsServer, passwords: dict[str, str]) -> AsyncIterator[PeerFactory]:
    peers: list[Peer] = []

    async def factory(user: str, inboxes: str | None = None) -> Peer:
        peers.append(await Peer(user, inboxes).connect(secured.url_for(user, passwords[user])))
        return peers[-1]

    yield factory
    for p in peers:
        await p.close()


async def _chat_stream(history: Peer) -> None:
    """Namespace chat's stream, created (or updated) by the history service's own code."""
    specs = stream_specs(CHAT, SUBJECTS, replicas=1, storage="memory", duplicate_window=60)
    await ensure_streams(history.nc.jetstream(timeout=JS_TIMEOUT), specs)


# --------------------------------------------------------------------------
# authentication
# --------------------------------------------------------------------------


async def _hello(server: NatsServer, user: str | None, password: str | None) -> str:
    """The server's answer to a CONNECT with these credentials, then a PING: PONG when admitted.

    (Raw protocol: nats-py leaves the socket of a refused connect open.)
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        info = json.loads((await within(reader.readline())).decode().removeprefix("INFO "))
        assert info["auth_required"] is True
        options: dict[str, Any] = {"verbose": False, "pedantic": False, "protocol": 1}
        if user is not None:
            options |= {"user": user, "pass": password}
        writer.write(f"CONNECT {json.dumps(options)}\r\nPING\r\n".encode())
        await writer.drain()
        return (await within(reader.readline())).decode().strip()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_a_wrong_password_or_no_credentials_is_refused(secured: NatsServer, passwords: dict[str, str]) -> None:
    assert await _hello(secured, GATEWAY, passwords[GATEWAY]) == "PONG"
    refused = "-ERR 'Authorization Violation'"
    assert await _hello(secured, GATEWAY, passwords[HISTORY]) == refused  # another user's password
    assert await _hello(secured, "root", passwords[GATEWAY]) == refused
    assert await _hello(secured, None, None) == refused


def test_each_user_has_its_own_password(passwords: dict[str, str]) -> None:
    conf = render_authorization(passwords)
    for user in USERS:
        assert re.search(rf'user: "{user}"\s+password: "{passwords[user]}"', conf)
    url = url_with_credentials("nats://a:4222,nats://b:4222", GATEWAY, passwords[GATEWAY])
    assert url == f"nats://gateway:{passwords[GATEWAY]}@a:4222,nats://gateway:{passwords[GATEWAY]}@b:4222"


def test_bucket_names_match_the_services() -> None:
    assert PRESENCE_LEASES_BUCKET == LEASE_BUCKET
    assert REVOCATIONS_BUCKET == BUCKET


# --------------------------------------------------------------------------
# history and the gateway: streams
# --------------------------------------------------------------------------


async def test_history_creates_updates_and_reads_streams_but_cannot_delete_them(peer: PeerFactory) -> None:
    history, backend = await peer(HISTORY), await peer(BACKEND)
    await _chat_stream(history)
    await _chat_stream(history)  # the second start updates in place
    js = history.nc.jetstream(timeout=JS_TIMEOUT)
    ack = await backend.nc.jetstream(timeout=JS_TIMEOUT).publish(SUBJECTS.input("chat:a"), b"x")
    assert (await js.stream_info(CHAT_STREAM)).state.last_seq == ack.seq
    # Direct gets (reads), and a purge of one channel (`remove`).
    direct = await history.nc.request(
        f"$JS.API.DIRECT.GET.{CHAT_STREAM}", json.dumps({"seq": ack.seq}).encode(), timeout=JS_TIMEOUT
    )
    assert direct.data == b"x"
    await js.purge_stream(CHAT_STREAM, subject=SUBJECTS.input("chat:a"))

    await history.refused(js.delete_stream(CHAT_STREAM), f"$JS.API.STREAM.DELETE.{CHAT_STREAM}")
    await history.refused(js.stream_info(f"KV_{REVOCATIONS_BUCKET}"), f"$JS.API.STREAM.INFO.KV_{REVOCATIONS_BUCKET}")
    purge_account = "$JS.API.ACCOUNT.PURGE.$G"
    await history.refused(history.nc.request(purge_account, b"", timeout=JS_TIMEOUT), purge_account)
    assert await js.stream_info(CHAT_STREAM)


async def test_the_gateway_cannot_create_update_purge_or_delete_a_stream(peer: PeerFactory) -> None:
    history, gateway = await peer(HISTORY), await peer(GATEWAY)
    await _chat_stream(history)
    hjs = history.nc.jetstream(timeout=JS_TIMEOUT)
    await gateway.nc.jetstream(timeout=JS_TIMEOUT).publish(SUBJECTS.input("chat:a"), b"kept")
    config = (await hjs.stream_info(CHAT_STREAM)).config

    js = gateway.nc.jetstream(timeout=JS_TIMEOUT)
    await gateway.refused(js.delete_stream(CHAT_STREAM), f"$JS.API.STREAM.DELETE.{CHAT_STREAM}")
    await gateway.refused(js.purge_stream(CHAT_STREAM), f"$JS.API.STREAM.PURGE.{CHAT_STREAM}")
    await gateway.refused(
        js.update_stream(config.evolve(max_msgs_per_subject=1)), f"$JS.API.STREAM.UPDATE.{CHAT_STREAM}"
    )
    await gateway.refused(
        js.add_stream(StreamConfig(name="STOLEN", subjects=["meshcast.live.>"])), "$JS.API.STREAM.CREATE.STOLEN"
    )
    # Nor read a stream's messages behind the history service's back.
    await gateway.refused(js.get_msg(CHAT_STREAM, 1), f"$JS.API.STREAM.MSG.GET.{CHAT_STREAM}")

    info = await hjs.stream_info(CHAT_STREAM)
    assert info.state.messages == 1
    assert info.config.max_msgs_per_subject == config.max_msgs_per_subject


async def test_the_gateway_publishes_live_and_into_history_and_gets_the_ack(peer: PeerFactory) -> None:
    history, gateway, other = await peer(HISTORY), await peer(GATEWAY), await peer(GATEWAY)
    await _chat_stream(history)
    got: list[Msg] = []

    async def collect(msg: Msg) -> None:
        got.append(msg)

    await other.nc.subscribe(SUBJECTS.live_wildcard(), cb=collect)
    await subscribed(other.nc)

    await gateway.nc.publish(SUBJECTS.live("x"), b"live")
    ack = await gateway.nc.jetstream(timeout=JS_TIMEOUT).publish(SUBJECTS.input("chat:index"), b"stored")
    assert ack.stream == CHAT_STREAM
    assert ack.seq >= 1
    # The stream republishes what it stored to the live subject.
    await wait_until_async(lambda: len(got) == 2, what="live and republished messages")
    assert [(m.subject, m.data) for m in got] == [
        (SUBJECTS.live("x"), b"live"),
        (SUBJECTS.live("chat:index"), b"stored"),
    ]
    gateway.assert_no_violation()
    other.assert_no_violation()


async def test_the_gateway_cannot_remove_history_control_gateways_or_pose_as_a_service(peer: PeerFactory) -> None:
    gateway = await peer(GATEWAY)
    nc = gateway.nc
    await gateway.refused(nc.publish(SUBJECTS.history_api("remove"), b""), SUBJECTS.history_api("remove"))
    await gateway.refused(nc.publish(SUBJECTS.control, b""), SUBJECTS.control)
    await gateway.refused(nc.publish(f"$KV.{REVOCATIONS_BUCKET}.user.x", b"0"), f"$KV.{REVOCATIONS_BUCKET}.user.x")
    for subject in (SUBJECTS.history_api("history"), SUBJECTS.presence_query, SUBJECTS.proxy("connect")):
        await gateway.refused(nc.subscribe(subject, queue="q"), subject, kind="subscription")


async def test_only_the_history_service_marks_a_removal(peer: PeerFactory) -> None:
    """A removal marker makes every earlier position of its channel unrecoverable:
    the history service writes it (its own code), nobody else can forge one."""
    history, gateway, backend = await peer(HISTORY), await peer(GATEWAY), await peer(BACKEND)
    await _chat_stream(history)
    store = HistoryStore(history.nc, history.nc.jetstream(timeout=JS_TIMEOUT), JS_TIMEOUT)
    await publish(backend.nc, "chat:a", b"{}", history=True)
    marker = SUBJECTS.removal("chat:a")
    removed_at = await store.remove(CHAT_STREAM, SUBJECTS.input("chat:a"), marker)
    assert await store.last_seq(CHAT_STREAM, marker) == removed_at
    assert await store.last_seq(CHAT_STREAM, SUBJECTS.input("chat:a")) == 0
    history.assert_no_violation()

    for forger in (gateway, backend):
        await forger.refused(forger.nc.publish(marker, b""), marker)
        js = forger.nc.jetstream(timeout=JS_TIMEOUT)
        await forger.refused(js.publish(SUBJECTS.removal("chat:b"), b""), SUBJECTS.removal("chat:b"))
    assert await store.last_seq(CHAT_STREAM, marker) == removed_at
    assert await store.last_seq(CHAT_STREAM, SUBJECTS.removal("chat:b")) == 0


# --------------------------------------------------------------------------
# KV buckets: presence's leases, auth's revocations (watched by gateways)
# --------------------------------------------------------------------------


async def test_presence_uses_its_lease_bucket_and_nothing_else(peer: PeerFactory) -> None:
    presence = await peer(PRESENCE)
    js = presence.nc.jetstream(timeout=JS_TIMEOUT)
    # As the presence service does at start, and when it announces a dead gateway.
    kv = await js.create_key_value(bucket=PRESENCE_LEASES_BUCKET, ttl=600, history=1, replicas=1)
    await kv.create("expired.gw-1", b"7")
    with pytest.raises(KeyWrongLastSequenceError):
        await kv.create("expired.gw-1", b"8")  # another instance holds the lease
    assert (await kv.get("expired.gw-1")).value == b"7"
    await js.create_key_value(bucket=PRESENCE_LEASES_BUCKET, ttl=600, history=1, replicas=1)  # a restart

    await presence.refused(
        js.delete_key_value(PRESENCE_LEASES_BUCKET), f"$JS.API.STREAM.DELETE.KV_{PRESENCE_LEASES_BUCKET}"
    )
    await presence.refused(
        js.add_stream(StreamConfig(name="OTHER", subjects=["other.>"])), "$JS.API.STREAM.CREATE.OTHER"
    )
    await presence.refused(presence.nc.publish(SUBJECTS.live("x"), b""), SUBJECTS.live("x"))


async def test_auth_writes_revocations_and_the_gateway_only_watches_them(peer: PeerFactory) -> None:
    auth, gateway = await peer(AUTH), await peer(GATEWAY)
    # The auth service's own code: create the bucket, bring it to a new TTL, write revocations.
    revocations = NatsRevocations(auth.nc, SUBJECTS.control, ttl=3600, replicas=1, timeout=JS_TIMEOUT)
    await revocations.ensure_bucket()
    revocations = NatsRevocations(auth.nc, SUBJECTS.control, ttl=7200, replicas=1, timeout=JS_TIMEOUT)
    await revocations.ensure_bucket()
    await revocations.revoke_user("mallory", 10)
    assert await revocations.revoke_user("mallory", 5) == 10  # the floor never moves back
    await revocations.revoke_jti("jti-1", 10)
    await revocations.publish_control(Control())

    # The gateway's own watch (an ordered consumer on the bucket) sees them, live.
    watch = RevocationWatch(gateway.nc, retry_interval=0.2)
    watch.start()
    try:
        await wait_until_async(lambda: watch.revocations.revoked("mallory", "", 1.0), what="the stored revocation")
        assert watch.revocations.revoked("bob", "jti-1", None)
        await revocations.revoke_user("eve", int(time.time()) + 60)
        await wait_until_async(lambda: watch.revocations.revoked("eve", "", None), what="a new revocation")
    finally:
        await watch.stop()
    gateway.assert_no_violation()
    auth.assert_no_violation()

    js = gateway.nc.jetstream(timeout=JS_TIMEOUT)
    subject = f"$KV.{REVOCATIONS_BUCKET}.{user_key('mallory')}"
    await gateway.refused(js.publish(subject, b""), subject)  # it cannot lift a revocation
    await gateway.refused(js.delete_key_value(REVOCATIONS_BUCKET), f"$JS.API.STREAM.DELETE.KV_{REVOCATIONS_BUCKET}")
    ajs = auth.nc.jetstream(timeout=JS_TIMEOUT)
    await auth.refused(ajs.delete_key_value(REVOCATIONS_BUCKET), f"$JS.API.STREAM.DELETE.KV_{REVOCATIONS_BUCKET}")
    await auth.refused(auth.nc.publish(SUBJECTS.live("x"), b""), SUBJECTS.live("x"))


# --------------------------------------------------------------------------
# request/reply: chunked answers, backends
# --------------------------------------------------------------------------


async def test_services_answer_requests_in_several_chunks(peer: PeerFactory) -> None:
    gateway, presence = await peer(GATEWAY), await peer(PRESENCE)

    def chunked(nc: Nats, parts: int) -> Callable[[Msg], Awaitable[None]]:
        async def answer(msg: Msg) -> None:
            for i in range(parts):
                await nc.publish(msg.reply, b"last" if i == parts - 1 else b"part")

        return answer

    await presence.nc.subscribe(SUBJECTS.presence_query, queue="meshcast-presence", cb=chunked(presence.nc, 5))
    await gateway.nc.subscribe(SUBJECTS.presence_sync(), cb=chunked(gateway.nc, 5))
    await subscribed(presence.nc)
    await subscribed(gateway.nc)

    def last(msg: Msg) -> bool:
        return msg.data == b"last"

    replies = await request_many(gateway.nc, SUBJECTS.presence_query, b"", last=last, wait=5)
    assert len(replies) == 5
    snapshot = await request_many(presence.nc, SUBJECTS.presence_sync(), b"", last=last, wait=5)
    assert len(snapshot) == 5
    gateway.assert_no_violation()
    presence.assert_no_violation()


async def test_a_backend_publishes_and_answers_the_gateway_but_manages_nothing(peer: PeerFactory) -> None:
    history, backend, gateway = await peer(HISTORY), await peer(BACKEND), await peer(GATEWAY)
    await _chat_stream(history)

    assert await publish(backend.nc, "chat:index", b"{}", history=True, idempotency_key="k1") >= 1
    assert await publish(backend.nc, "lobby", b"{}") == 0

    async def decide(msg: Msg) -> None:
        await msg.respond(b"ok")

    await backend.nc.subscribe(SUBJECTS.proxy("connect"), queue="backends", cb=decide)
    await backend.nc.subscribe(SUBJECTS.presence_events_wildcard())
    await subscribed(backend.nc)
    assert (await gateway.nc.request(SUBJECTS.proxy("connect"), b"", timeout=5)).data == b"ok"
    backend.assert_no_violation()

    js = backend.nc.jetstream(timeout=JS_TIMEOUT)
    await backend.refused(js.delete_stream(CHAT_STREAM), f"$JS.API.STREAM.DELETE.{CHAT_STREAM}")
    await backend.refused(backend.nc.subscribe(SUBJECTS.history_api(">")), SUBJECTS.history_api(">"), "subscription")


# --------------------------------------------------------------------------
# inboxes: each user reads its own replies only
# --------------------------------------------------------------------------


@pytest.mark.parametrize("user", USERS)
async def test_a_user_cannot_subscribe_to_another_users_inboxes(peer: PeerFactory, user: str) -> None:
    me = await peer(user)
    for other in USERS:
        if other == user:
            continue
        for subject in (f"{inbox_prefix(other)}.>", f"{inbox_prefix(other)}.abc.*", f"{inbox_prefix(other)}.abc.x"):
            await me.refused(me.nc.subscribe(subject), subject, "subscription")
    # Nor nats-py's shared default prefix, nor everything.
    for subject in ("_INBOX.>", "_INBOX.abc", ">"):
        await me.refused(me.nc.subscribe(subject), subject, "subscription")
    # Its own: yes.
    me.errors.clear()
    await me.nc.subscribe(f"{inbox_prefix(user)}.>")
    await subscribed(me.nc)
    assert me.nc.new_inbox().startswith(f"{inbox_prefix(user)}.")
    me.assert_no_violation()


async def test_replies_reach_the_requester_only(peer: PeerFactory) -> None:
    """A presence query's chunked answer goes to the gateway's inbox; nobody else can listen there."""
    gateway, presence, backend = await peer(GATEWAY), await peer(PRESENCE), await peer(BACKEND)
    # A backend tries to eavesdrop on the gateways' replies, as `_INBOX.>` used to allow.
    spied: list[Msg] = []

    async def spy(msg: Msg) -> None:
        spied.append(msg)

    await backend.refused(
        backend.nc.subscribe(f"{inbox_prefix(GATEWAY)}.>", cb=spy), f"{inbox_prefix(GATEWAY)}.>", "subscription"
    )

    async def answer(msg: Msg) -> None:
        assert msg.reply.startswith(f"{inbox_prefix(GATEWAY)}.")
        for i in range(3):
            await presence.nc.publish(msg.reply, b"last" if i == 2 else b"part")

    await presence.nc.subscribe(SUBJECTS.presence_query, queue="meshcast-presence", cb=answer)
    await subscribed(presence.nc)
    replies = await request_many(gateway.nc, SUBJECTS.presence_query, b"", last=lambda m: m.data == b"last", wait=5)
    assert [m.data for m in replies] == [b"part", b"part", b"last"]
    # A plain request/reply (nats-py's shared response subscription) works as well.
    assert (await gateway.nc.request(SUBJECTS.presence_query, b"", timeout=5)).data == b"part"
    await backend.nc.flush()  # anything the server delivered to the backend came before this PONG
    assert not spied
    # A responder may answer only the requests it received: not write into another's inbox.
    forged = f"{inbox_prefix(GATEWAY)}.forged"
    await presence.refused(presence.nc.publish(forged, b"x"), forged)
    gateway.assert_no_violation()


async def test_a_client_with_the_default_prefix_gets_no_replies(peer: PeerFactory) -> None:
    """A service started without its MESHCAST_NATS_INBOX_PREFIX fails loudly, not silently elsewhere."""
    history = await peer(HISTORY)
    await _chat_stream(history)
    stray = await peer(GATEWAY, inboxes="_INBOX")
    js = stray.nc.jetstream(timeout=JS_TIMEOUT)
    await stray.refused(js.publish(SUBJECTS.input("chat:a"), b"x"), "_INBOX.", "subscription", prefix=True)


async def test_the_bus_connect_uses_the_inbox_prefix(
    secured: NatsServer, passwords: dict[str, str], peer: PeerFactory
) -> None:
    """meshcast.bus.connect(..., inbox_prefix=...): requests, JetStream acks, as a backend does it."""
    history = await peer(HISTORY)
    await _chat_stream(history)
    nc = await connect(
        secured.url_for(BACKEND, passwords[BACKEND]), name="test-backend", inbox_prefix=inbox_prefix(BACKEND)
    )
    try:
        assert nc.new_inbox().startswith("_INBOX_backend.")
        assert await within(publish(nc, "chat:index", b"{}", history=True)) >= 1  # the ack on its inbox
    finally:
        await close(nc, 2)
    default = await connect(secured.url_for(HISTORY, passwords[HISTORY]), name="test-default")
    try:
        assert default.new_inbox().startswith("_INBOX.")  # unchanged without the argument
    finally:
        await close(default, 2)


# --------------------------------------------------------------------------
# the real services, each with its own user
# --------------------------------------------------------------------------


def _violations(paths: list[Path]) -> list[str]:
    found = []
    for path in paths:
        if path.exists():
            found += [
                f"{path.name}: {line}" for line in path.read_text(errors="replace").splitlines() if "iolation" in line
            ]
    return found


async def _refused_with(url: str, token: str) -> int | None:
    """The close code of a connect with `token` (None while the gateway admits it)."""
    async with websockets.connect(url, open_timeout=5) as ws:
        await ws.send(json.dumps({"id": 1, "connect": {"token": token}}))
        with contextlib.suppress(websockets.ConnectionClosed):
            reply = json.loads(await within(ws.recv()))
            if "connect" in reply:
                return None
            await within(ws.wait_closed())
        return ws.close_code


@pytest.mark.e2e
async def test_the_services_work_with_their_own_users(
    secured: NatsServer, passwords: dict[str, str], peer: PeerFactory, tmp_path: Path
) -> None:
    def url(user: str) -> list[str]:
        return [secured.url_for(user, passwords[user])]

    def inboxes(user: str) -> dict[str, str]:
        # As make run, compose and Kubernetes set it: the default _INBOX is refused to everyone.
        return {"MESHCAST_NATS_INBOX_PREFIX": inbox_prefix(user)}

    auth = auth_process(tmp_path, url(AUTH), secret=SECRET, extra_env=inboxes(AUTH))
    history = history_process(
        tmp_path,
        url(HISTORY),
        namespaces_file=E2E_NAMESPACES,
        extra_env={"MESHCAST_HISTORY_STORAGE": "memory", **inboxes(HISTORY)},
    )
    presence = presence_process(
        tmp_path, url(PRESENCE), extra_env={"MESHCAST_STARTUP_SYNC_WAIT": "0.2", **inboxes(PRESENCE)}
    )
    gateway = gateway_process(
        tmp_path,
        url(GATEWAY),
        secret=SECRET,
        namespaces_file=E2E_NAMESPACES,
        extra_env={
            "MESHCAST_PRESENCE_HEARTBEAT_INTERVAL": "0.5",
            "MESHCAST_REVOCATIONS_RETRY_INTERVAL": "0.2",
            **inboxes(GATEWAY),
        },
    )
    started: list[ServiceProcess] = []
    try:
        for proc in (auth, history, presence, gateway):
            started.append(proc.start(wait=30))
        backend = await peer(BACKEND)
        events: list[Msg] = []

        async def on_event(msg: Msg) -> None:
            events.append(msg)

        await backend.nc.subscribe(SUBJECTS.presence_events_wildcard(), cb=on_event)
        await subscribed(backend.nc)

        async with keyed_channel(f"127.0.0.1:{auth.env['_GRPC_PORT']}") as channel:
            stub = AuthServiceStub(channel)
            token = (await stub.IssueConnectionToken(IssueConnectionTokenRequest(user="alice", ttl_seconds=600))).token
            async with websockets.connect(ws_url(gateway), open_timeout=5) as ws:
                client = JsonClient(ws)
                reply = await client.command("connect", {"token": token})
                assert "connect" in reply, reply
                reply = await client.command("subscribe", {"channel": "chat:index"})
                assert "subscribe" in reply, reply
                # Its join reaches the backends.
                await wait_until_async(lambda: bool(events), what="a presence event")

                reply = await client.command("publish", {"channel": "chat:index", "data": {"text": "from alice"}})
                assert "error" not in reply, reply
                push = await client.next_push()
                assert push["push"]["pub"]["data"] == {"text": "from alice"}
                assert push["push"]["pub"]["offset"] >= 1

                # A backend's publish into the history channel reaches the client too.
                await within(publish(backend.nc, "chat:index", b'{"text": "from backend"}', history=True))
                assert (await client.next_push())["push"]["pub"]["data"] == {"text": "from backend"}

                history_reply = await client.command("history", {"channel": "chat:index", "limit": 10})
                texts = [p["data"]["text"] for p in history_reply["history"]["publications"]]
                assert texts == ["from alice", "from backend"]

                presence_reply = await client.command("presence", {"channel": "chat:index"})
                members = presence_reply["presence"]["presence"].values()
                assert [m["user"] for m in members] == ["alice"], presence_reply

                # The auth service's disconnect (a control message) reaches the gateway.
                await stub.DisconnectUser(DisconnectUserRequest(user="alice"))
                assert await client.close_code() == 3503

            # Its revocation (the KV bucket the gateway watches) refuses the user's tokens.
            mallory = (await stub.IssueConnectionToken(IssueConnectionTokenRequest(user="mallory"))).token
            assert await _refused_with(ws_url(gateway), mallory) is None
            await stub.RevokeUser(RevokeUserRequest(user="mallory"))
            await wait_until_async(
                lambda: refused_with(ws_url(gateway), mallory, 3500), 10, "mallory refused", every=0.1
            )
    finally:
        for proc in reversed(started):
            proc.terminate()
    logs = [secured.log_path, *(proc.log_path for proc in (auth, history, presence, gateway))]
    assert not _violations(logs), "\n".join(_violations(logs))


async def refused_with(url: str, token: str, code: int) -> bool:
    return await _refused_with(url, token) == code


async def test_the_api_user_stores_publications_commands_gateways_and_manages_nothing(peer: PeerFactory) -> None:
    history, api, gateway = await peer(HISTORY), await peer(API), await peer(GATEWAY)
    await _chat_stream(history)
    assert await publish(api.nc, "chat:index", b"{}", history=True, idempotency_key="api-1") >= 1
    assert await publish(api.nc, "lobby", b"{}") == 0
    await api.nc.publish(SUBJECTS.control, Control().SerializeToString())

    async def answer(msg: Msg) -> None:
        await msg.respond(b"node")

    await gateway.nc.subscribe(SUBJECTS.node_api("info"), cb=answer)
    await subscribed(gateway.nc)
    assert (await api.nc.request(SUBJECTS.node_api("info"), b"", timeout=5)).data == b"node"
    api.assert_no_violation()
    gateway.assert_no_violation()

    js = api.nc.jetstream(timeout=JS_TIMEOUT)
    await api.refused(js.delete_stream(CHAT_STREAM), f"$JS.API.STREAM.DELETE.{CHAT_STREAM}")
    await api.refused(api.nc.publish(SUBJECTS.removal("chat:index"), b""), SUBJECTS.removal("chat:index"))
    for subject in (SUBJECTS.node_api("channels"), SUBJECTS.history_api("history"), SUBJECTS.live_wildcard()):
        await api.refused(api.nc.subscribe(subject), subject, kind="subscription")
