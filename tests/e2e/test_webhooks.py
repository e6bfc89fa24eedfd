"""The webhook relay with real processes: retries, signatures, order per channel, dead letters.

nats-server with each service's own NATS user (as deployed), the events service
(owner of MESHCAST_EVENTS), one gateway storing its lifecycle events, and per
test one or two relays (`python -m meshcast.webhooks`) POSTing to a real aiohttp
server in the test, which fails, answers or hangs as each test asks. Clients are
the unmodified centrifuge-python SDK. Dead letters are read back from JetStream
as user `backend` reads them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from aiohttp import web

from meshcast.bus import Subjects
from meshcast.common.natsauth import (
    BACKEND,
    EVENTS,
    GATEWAY,
    USERS,
    WEBHOOKS,
    generate_password,
    inbox_prefix,
    render_authorization,
)
from meshcast.proto.events_pb2 import Event
from meshcast.testing import (
    NatsServer,
    ServiceProcess,
    events_process,
    free_port,
    gateway_process,
    metric_sum,
    timeout,
    within,
    ws_url,
)
from meshcast.testing.processes import backend_service
from meshcast.webhooks.signing import ATTEMPT_HEADER, EVENT_ID_HEADER, SIGNATURE_HEADER, verify

from .conftest import ROOT
from .conftest import SECRET as TOKEN_SECRET
from .sdk import connected, disconnected, sdk_client

pytestmark = pytest.mark.e2e

SUBJECTS = Subjects()
SECRET = "webhook-e2e-secret-0123456789"
NAMESPACES = """
namespaces:
  - name: chat
"""


@dataclass
class Stack:
    nats: NatsServer
    passwords: dict[str, str]
    workdir: Path
    gateway: ServiceProcess
    services: list[ServiceProcess]

    def url(self, user: str) -> str:
        return self.nats.url_for(user, self.passwords[user])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One NATS, events service and gateway for the module; each test brings its relays."""
    workdir = tmp_path_factory.mktemp("webhooks")
    passwords = {user: generate_password() for user in USERS}
    server = NatsServer(workdir / "nats", authorization=render_authorization(passwords)).start()
    namespaces = workdir / "namespaces.yaml"
    namespaces.write_text(NAMESPACES)
    started: list[ServiceProcess] = []
    try:
        events = events_process(
            workdir,
            [server.url_for(EVENTS, passwords[EVENTS])],
            extra_env={"MESHCAST_NATS_INBOX_PREFIX": inbox_prefix(EVENTS)},
        )
        gateway = gateway_process(
            workdir,
            [server.url_for(GATEWAY, passwords[GATEWAY])],
            secret=TOKEN_SECRET,
            namespaces_file=namespaces,
            extra_env={"MESHCAST_EVENTS_ENABLED": "true", "MESHCAST_NATS_INBOX_PREFIX": inbox_prefix(GATEWAY)},
        )
        for proc in (events, gateway):
            started.append(proc.start(wait=30))
        yield Stack(server, passwords, workdir, gateway, started)
    finally:
        for proc in reversed(started):
            proc.terminate()
        violations = [
            line for p in started for line in p.logs().splitlines() if "permissions violation" in line.lower()
        ]
        server.stop()
        assert not violations, violations


@dataclass
class Received:
    at: float
    event_id: str
    attempt: int
    signed: bool
    body: dict[str, Any]
    status: int


@dataclass
class Endpoint:
    """A webhook receiver: each path fails an event's first `fail` attempts (500), or hangs."""

    fail: int = 0
    hang: bool = False
    received: list[Received] = field(default_factory=list)
    hanging: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        event_id = request.headers.get(EVENT_ID_HEADER, "")
        if self.hang:
            self.hanging += 1
            self._changed.set()
            await asyncio.Event().wait()  # never answers: the relay's timeout ends it
        seen = sum(1 for r in self.received if r.event_id == event_id)
        status = 500 if seen < self.fail else 200
        self.received.append(
            Received(
                time.monotonic(),
                event_id,
                int(request.headers.get(ATTEMPT_HEADER, "0")),
                verify(SECRET.encode(), raw, request.headers.get(SIGNATURE_HEADER, "")),
                json.loads(raw),
                status,
            )
        )
        self._changed.set()
        return web.Response(status=status)

    def delivered(self) -> list[Received]:
        return [r for r in self.received if r.status == 200]

    async def until(self, what: str, check: Callable[[], bool], seconds: float = 10.0) -> None:
        async def wait() -> None:
            while not check():
                self._changed.clear()
                await self._changed.wait()

        try:
            await within(wait(), seconds)
        except TimeoutError:
            seen = [(r.body.get("kind"), r.event_id, r.status) for r in self.received]
            raise AssertionError(f"timed out waiting for {what}: {seen}") from None


@dataclass
class Receiver:
    port: int
    endpoints: dict[str, Endpoint]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    endpoints: dict[str, Endpoint] = {}

    async def handle(request: web.Request) -> web.Response:
        return await endpoints[request.match_info["path"]].handle(request)

    app = web.Application()
    app.router.add_post("/{path}", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Receiver(port, endpoints)
    finally:
        await runner.cleanup()


@pytest.fixture
def relays(stack: Stack) -> Iterator[Callable[..., ServiceProcess]]:
    """Start a relay (`name`, to `url`, more env); all stopped at the test's end."""
    started: list[ServiceProcess] = []

    def start(name: str, url: str, **env: str) -> ServiceProcess:
        relay = backend_service(
            "meshcast.webhooks",
            stack.workdir,
            [stack.url(WEBHOOKS)],
            name=f"webhooks-{name}",
            extra_env={
                "MESHCAST_NATS_INBOX_PREFIX": inbox_prefix(WEBHOOKS),
                "MESHCAST_WEBHOOK_NAME": name,
                "MESHCAST_WEBHOOK_URL": url,
                "MESHCAST_WEBHOOK_SECRET": SECRET,
                "MESHCAST_WEBHOOK_BACKOFF_INITIAL": "0.05",
                "MESHCAST_WEBHOOK_BACKOFF_MAX": "0.2",
                "MESHCAST_WEBHOOK_TIMEOUT": "2",
                **env,
            },
        )
        started.append(relay.start(wait=30))
        return relay

    try:
        yield start
    finally:
        for relay in reversed(started):
            relay.terminate()
        violations = [
            line for r in started for line in r.logs().splitlines() if "permissions violation" in line.lower()
        ]
        assert not violations, violations


def of_user(endpoint: Endpoint, user: str) -> list[Received]:
    """`user`'s events that the endpoint answered 2xx, in arrival order."""
    return [r for r in endpoint.delivered() if user in {str(v.get("user", "")) for v in _bodies(r)}]


def _bodies(received: Received) -> list[dict[str, Any]]:
    kind = received.body["kind"]
    inner = received.body.get(kind)
    return [inner] if isinstance(inner, dict) else []


async def test_events_arrive_signed_in_order_per_channel_after_failed_attempts(
    stack: Stack, receiver: Receiver, relays: Callable[..., ServiceProcess]
) -> None:
    endpoint = receiver.endpoints["retry"] = Endpoint(fail=2)
    relay = relays("retry", receiver.url("retry"), MESHCAST_WEBHOOK_MAX_ATTEMPTS="5")
    client = sdk_client(ws_url(stack.gateway), "orderly")
    await connected(client)
    for channel in ("chat:a", "chat:b"):
        sub = client.new_subscription(channel)
        for _ in range(3):  # subscribe, unsubscribe, three times over: six events of the channel in order
            await within(sub.subscribe())
            await within(sub.ready())
            await within(sub.unsubscribe())
    await disconnected(client)

    def done() -> bool:
        kinds = [r.body["kind"] for r in of_user(endpoint, "orderly")]
        return kinds.count("subscribe") == 6 and kinds.count("unsubscribe") == 6 and "disconnect" in kinds

    await endpoint.until("the user's 14 events", done, 20)
    mine = of_user(endpoint, "orderly")
    assert [r.body["kind"] for r in mine].count("connect") == 1
    # Every event was tried three times: two 500s, then 200, each attempt numbered and signed.
    for delivered in mine:
        tries = [r for r in endpoint.received if r.event_id == delivered.event_id]
        assert [(r.attempt, r.status) for r in tries] == [(1, 500), (2, 500), (3, 200)], tries
    assert all(r.signed for r in endpoint.received)
    # Per channel: the stream's order, subscribe and unsubscribe alternating.
    for channel in ("chat:a", "chat:b"):
        lane = [r for r in mine if r.body.get(r.body["kind"], {}).get("channel") == channel]
        assert [r.body["seq"] for r in lane] == sorted(r.body["seq"] for r in lane)
        assert [r.body["kind"] for r in lane] == ["subscribe", "unsubscribe"] * 3
    [connect] = [r for r in mine if r.body["kind"] == "connect"]
    [disconnect] = [r for r in mine if r.body["kind"] == "disconnect"]
    assert connect.body["seq"] < disconnect.body["seq"]  # one client's own events in order too
    assert connect.event_id == f"connect:{connect.body['connect']['client']}"
    assert metric_sum(relay, "meshcast_webhooks_retries_total", port="_HEALTH_PORT") >= 2 * len(mine)
    assert metric_sum(relay, "meshcast_webhooks_dead_letters_total", port="_HEALTH_PORT") == 0


async def test_an_event_failing_every_attempt_becomes_a_dead_letter_with_the_last_error(
    stack: Stack, receiver: Receiver, relays: Callable[..., ServiceProcess]
) -> None:
    endpoint = receiver.endpoints["dead"] = Endpoint(fail=1000)
    relay = relays("dead", receiver.url("dead"), MESHCAST_WEBHOOK_MAX_ATTEMPTS="3", MESHCAST_WEBHOOK_KINDS="connect")
    clients = [sdk_client(ws_url(stack.gateway), f"doomed{n}") for n in range(2)]
    await connected(*clients)
    sub = clients[0].new_subscription("chat:dead")
    await within(sub.subscribe())
    await disconnected(*clients)

    ids: set[str] = set()

    def both_tried() -> bool:
        ids.clear()
        ids.update(r.event_id for r in endpoint.received if r.body["connect"]["user"].startswith("doomed"))
        return len(ids) == 2 and all(sum(r.event_id == i for r in endpoint.received) == 3 for i in ids)

    await endpoint.until("three attempts of both connects", both_tried, 15)
    assert {r.body["kind"] for r in endpoint.received} == {"connect"}  # the kind filter
    nc = await nats.connect(stack.url(BACKEND), inbox_prefix=inbox_prefix(BACKEND))
    try:
        js = nc.jetstream(timeout=timeout(5))

        async def stored() -> None:
            while metric_sum(relay, "meshcast_webhooks_dead_letters_total", port="_HEALTH_PORT") < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.05)

        await within(stored(), 10)
        sub_js = await js.subscribe(
            SUBJECTS.dead_letters_wildcard(), stream=SUBJECTS.events_stream, ordered_consumer=True
        )
        letters = [await within(sub_js.next_msg(timeout=timeout(5))) for _ in range(2)]
        await sub_js.unsubscribe()
    finally:
        await nc.close()
    told = {Event.FromString(m.data).connect.client for m in letters}
    assert told == {i.removeprefix("connect:") for i in ids}
    for letter in letters:
        assert letter.subject == "meshcast.events.v1.dead.connect"
        assert letter.headers is not None
        assert letter.headers["Meshcast-Webhook-Error"] == "HTTP 500"
        assert letter.headers["Meshcast-Webhook-Attempts"] == "3"
        assert letter.headers["Meshcast-Event-Id"] in ids
    assert metric_sum(relay, "meshcast_webhooks_delivered_total", port="_HEALTH_PORT") == 0


async def test_a_hung_endpoint_delays_neither_the_gateway_nor_another_endpoint(
    stack: Stack, receiver: Receiver, relays: Callable[..., ServiceProcess]
) -> None:
    hung = receiver.endpoints["hung"] = Endpoint(hang=True)
    healthy = receiver.endpoints["healthy"] = Endpoint()
    relays("hung", receiver.url("hung"), MESHCAST_WEBHOOK_TIMEOUT="30")
    relays("healthy", receiver.url("healthy"))
    loop = asyncio.get_running_loop()
    slowest = 0.0
    for n in range(5):
        started = loop.time()
        client = sdk_client(ws_url(stack.gateway), f"busy{n}")
        await connected(client)
        sub = client.new_subscription(f"chat:busy{n}")
        await within(sub.subscribe())
        await within(sub.ready())
        await within(sub.unsubscribe())
        await disconnected(client)
        slowest = max(slowest, loop.time() - started)
        if n == 0:
            await hung.until("the hung endpoint holding a POST", lambda: hung.hanging >= 1, 10)
    # While the hung endpoint holds the relay's POSTs, the gateway answers as ever...
    assert slowest < timeout(2.0), slowest
    assert hung.hanging >= 1
    assert not hung.received
    # ...and the other endpoint's relay delivers every event.
    await healthy.until(
        "every busy user's disconnect",
        lambda: all(any(r.body["kind"] == "disconnect" for r in of_user(healthy, f"busy{n}")) for n in range(5)),
        10,
    )
    # Several channels' events are held at once: one POST per channel, not one for all.
    await hung.until("several lanes in flight", lambda: hung.hanging >= 3, 5)


def readme_receiver() -> str:
    text = (ROOT / "services" / "webhooks" / "README.md").read_text()
    match = re.search(r"<!-- webhook receiver example -->\s*```python\n(.*?)```", text, re.S)
    assert match, "the README's webhook receiver example"
    return match.group(1)


async def test_the_readme_receiver_verifies_and_prints_what_the_relay_posts(
    stack: Stack, relays: Callable[..., ServiceProcess], tmp_path: Path
) -> None:
    script = tmp_path / "receiver.py"
    script.write_text(readme_receiver())
    port = free_port()
    env = {"PATH": os.environ.get("PATH", ""), "PORT": str(port), "MESHCAST_WEBHOOK_SECRET": SECRET, "LIMIT": "3"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        async with aiohttp.ClientSession() as http:

            async def forged() -> int:
                while True:
                    try:
                        headers = {SIGNATURE_HEADER: "sha256=" + "0" * 64}
                        async with http.post(url, data=b'{"kind":"connect"}', headers=headers) as resp:
                            return resp.status
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.05)  # not listening yet

            assert await within(forged(), 10) == 401
        relays("readme", url, MESHCAST_WEBHOOK_KINDS="connect,subscribe,disconnect")
        client = sdk_client(ws_url(stack.gateway), "reader")
        await connected(client)
        sub = client.new_subscription("chat:readme")
        await within(sub.subscribe())
        await within(sub.ready())
        await disconnected(client)
        out, err = await within(proc.communicate(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    lines = sorted((line.split() for line in out.decode().splitlines()), key=lambda words: int(words[0]))
    assert [words[1:] for words in lines] == [
        ["connect", "reader"],
        ["subscribe", "reader", "chat:readme"],
        ["disconnect", "reader"],
    ]


async def test_a_restarted_relay_resumes_where_it_was_acknowledged(
    stack: Stack, receiver: Receiver, relays: Callable[..., ServiceProcess]
) -> None:
    endpoint = receiver.endpoints["resume"] = Endpoint()
    relay = relays("resume", receiver.url("resume"), MESHCAST_WEBHOOK_KINDS="connect,disconnect")
    first = sdk_client(ws_url(stack.gateway), "before")
    await connected(first)
    await endpoint.until("the first connect", lambda: bool(of_user(endpoint, "before")), 10)
    relay.terminate()
    await disconnected(first)
    second = sdk_client(ws_url(stack.gateway), "while-down")
    await connected(second)
    await disconnected(second)
    await asyncio.sleep(timeout(0.3))
    assert [r.body["kind"] for r in endpoint.received] == ["connect"]
    await asyncio.to_thread(relay.start, 30)
    await endpoint.until(
        "what happened while it was down",
        lambda: len(of_user(endpoint, "while-down")) == 2 and len(of_user(endpoint, "before")) == 2,
        10,
    )
    # What it had acknowledged is not sent again.
    assert [r.body["kind"] for r in of_user(endpoint, "before")] == ["connect", "disconnect"]
    assert [r.body["kind"] for r in of_user(endpoint, "while-down")] == ["connect", "disconnect"]
