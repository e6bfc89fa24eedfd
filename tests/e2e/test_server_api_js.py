"""The server API with the unmodified `cent.js` client (npm) against real processes.

The stack of `test_server_api.py` (`apistack.api_stack`: NATS with a user per
service, history, presence, two gateways and the API as subprocesses); each call
is one run of `js/cent_api.mjs`, a fresh `CentClient` of the pinned cent.js
against the API's HTTP base URL, and centrifuge-python SDK clients observe the
effect. What the client resolves to is checked against Centrifugo's server API
(field names, zero values left out, the error object), not only for "no error".

What cent.js 6.1.0 itself cannot do, as its source shows (`dist/cent.client.js`):
- no `batch` method: its `pipeline()` posts Centrifugo's legacy line-delimited
  commands (`{"method", "params"}` per line) to the base URL itself, `POST /api`,
  which Centrifugo v6 still serves (`internal/api/handler_legacy.go`, "to remove in
  v7"), and so does the API;
- a reply error rejects with `new CentException(res.error)`, so the code and
  message of Centrifugo's error object are lost (message "[object Object]"):
  the codes are visible only inside a `broadcast` result;
- a 401 (empty body) rejects with the `SyntaxError` of `res.json()`, the HTTP
  status nowhere in it;
- its `timeout` option is declared but unused: the test's subprocess timeout bounds each call.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from centrifuge import ClientEventHandler, ServerSubscribedContext, ServerUnsubscribedContext

from meshcast.testing import timeout, wait_until_async, within, ws_url
from meshcast.testing.tools import require_tool, unavailable

from .apistack import KEY, ApiStack, api_stack
from .sdk import ConnectionEvents, connected, disconnected, sdk_client, subscribed

pytestmark = pytest.mark.e2e

__all__ = ["api_stack"]  # the module-scoped fixture, imported

JS_DIR = Path(__file__).parent / "js"
SCRIPT = JS_DIR / "cent_api.mjs"
# Centrifugo's server API errors (internal/apiproto/errors.go), as a client sees them.
UNKNOWN_CHANNEL = {"code": 102, "message": "unknown channel"}


@pytest.fixture(scope="module")
def node() -> str:
    """node, with the pinned cent.js installed (`make e2e` runs `npm ci`)."""
    found = require_tool("node", "Node.js: Debian's nodejs and npm, installed by .ci/run")
    if not (JS_DIR / "node_modules" / "cent.js").exists():
        unavailable("cent.js is not installed in tests/e2e/js: run `make e2e` (npm ci)")
    return found


@dataclass(frozen=True)
class CentJs:
    """Calls of cent.js's `CentClient` against one API, one node process each."""

    node: str
    url: str
    key: str

    async def call(self, method: str, argument: Any = None) -> dict[str, Any]:
        """What the client's promise did: ``{"resolved": value}`` or ``{"rejected": error}``."""
        args = [self.node, str(SCRIPT), self.url, self.key, method]
        if argument is not None:
            args.append(json.dumps(argument))
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout(15))
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        assert proc.returncode == 0, err.decode()
        [line] = out.decode().splitlines()
        outcome: dict[str, Any] = json.loads(line)
        return outcome

    async def resolved(self, method: str, argument: Any = None) -> Any:
        outcome = await self.call(method, argument)
        assert "resolved" in outcome, f"cent.js {method} rejected: {outcome}"
        return outcome["resolved"]

    async def rejected(self, method: str, argument: Any = None) -> dict[str, Any]:
        outcome = await self.call(method, argument)
        assert "rejected" in outcome, f"cent.js {method} resolved: {outcome}"
        rejection: dict[str, Any] = outcome["rejected"]
        return rejection


@pytest.fixture
def cent(node: str, api_stack: ApiStack) -> CentJs:
    return CentJs(node, api_stack.base, KEY)


class ServerSubscriptions(ClientEventHandler):
    """The channels a connection is subscribed to and unsubscribed from server-side."""

    def __init__(self) -> None:
        self.subscribed: asyncio.Queue[ServerSubscribedContext] = asyncio.Queue()
        self.unsubscribed: asyncio.Queue[str] = asyncio.Queue()

    async def on_subscribed(self, ctx: ServerSubscribedContext) -> None:
        await self.subscribed.put(ctx)

    async def on_unsubscribed(self, ctx: ServerUnsubscribedContext) -> None:
        await self.unsubscribed.put(ctx.channel)


def _is_position(value: Any) -> bool:
    """Centrifugo's StreamPosition as JSON: an offset of at least 1 and an epoch."""
    return (
        isinstance(value, dict)
        and set(value) == {"offset", "epoch"}
        and isinstance(value["offset"], int)
        and value["offset"] >= 1
        and isinstance(value["epoch"], str)
        and value["epoch"] != ""
    )


# --------------------------------------------------------------------------
# publish, broadcast, history
# --------------------------------------------------------------------------


async def test_publish_resolves_to_offset_and_epoch_and_reaches_both_gateways(
    api_stack: ApiStack, cent: CentJs
) -> None:
    gw1, gw2 = api_stack.gateways
    alice, bob = sdk_client(ws_url(gw1), "alice"), sdk_client(ws_url(gw2), "bob")
    await connected(alice, bob)
    try:
        at_alice, at_bob = await subscribed(alice, "chat:jspub"), await subscribed(bob, "chat:jspub")
        first = await cent.resolved("publish", {"channel": "chat:jspub", "data": {"n": 1}})
        assert _is_position(first), first
        assert await at_alice.next() == {"n": 1}
        assert await at_bob.next() == {"n": 1}
        second = await cent.resolved("publish", {"channel": "chat:jspub", "data": {"n": 2}})
        assert second == {"offset": first["offset"] + 1, "epoch": first["epoch"]}
        assert await at_bob.next() == {"n": 2}

        # No history in the default namespace: Centrifugo's `{"result": {}}`.
        lobby = await subscribed(alice, "lobby")
        assert await cent.resolved("publish", {"channel": "lobby", "data": [1, 2]}) == {}
        assert await lobby.next() == [1, 2]
    finally:
        await disconnected(alice, bob)


async def test_history_answers_publications_and_position_then_remove_empties_it(cent: CentJs) -> None:
    channel = "chat:jshist"
    tagged = await cent.resolved("publish", {"channel": channel, "data": {"n": 1}, "tags": {"k": "v"}})
    await cent.resolved("publish", {"channel": channel, "data": {"n": 2}})
    last = await cent.resolved("publish", {"channel": channel, "data": {"n": 3}})
    epoch, offsets = tagged["epoch"], [tagged["offset"], tagged["offset"] + 1, last["offset"]]
    assert offsets == list(range(offsets[0], offsets[0] + 3))

    everything = await cent.resolved("getHistory", {"channel": channel, "limit": -1})
    assert everything == {
        "publications": [
            {"data": {"n": 1}, "offset": offsets[0], "tags": {"k": "v"}},
            {"data": {"n": 2}, "offset": offsets[1]},
            {"data": {"n": 3}, "offset": offsets[2]},
        ],
        "offset": last["offset"],
        "epoch": epoch,
    }
    newest = await cent.resolved("getHistory", {"channel": channel, "limit": 1, "reverse": True})
    assert [p["data"] for p in newest["publications"]] == [{"n": 3}]
    since = {"offset": offsets[0], "epoch": epoch}
    after = await cent.resolved("getHistory", {"channel": channel, "limit": 10, "since": since})
    assert [p["offset"] for p in after["publications"]] == offsets[1:]
    # limit 0: the stream position only, and an empty publications list (as Centrifugo writes it).
    assert await cent.resolved("getHistory", {"channel": channel}) == {**last, "publications": []}

    assert await cent.resolved("removeHistory", {"channel": channel}) == {}
    emptied = await cent.resolved("getHistory", {"channel": channel, "limit": -1})
    assert emptied.get("publications", []) == []


async def test_broadcast_resolves_to_a_response_per_channel(api_stack: ApiStack, cent: CentJs) -> None:
    alice = sdk_client(ws_url(api_stack.gateways[1]), "alice")
    await connected(alice)
    try:
        at_chat, at_lobby = await subscribed(alice, "chat:jscast"), await subscribed(alice, "lobby")
        result = await cent.resolved("broadcast", {"channels": ["chat:jscast", "nope:x", "lobby"], "data": {"b": 1}})
        # Centrifugo's BroadcastResult, `{"responses": [...]}` (cent.js types it as an array).
        assert set(result) == {"responses"}
        stored, unknown, lobby = result["responses"]
        assert set(stored) == {"result"}
        assert _is_position(stored["result"]), stored
        assert unknown == {"error": UNKNOWN_CHANNEL}
        assert lobby == {"result": {}}
        assert await at_chat.next() == {"b": 1}
        assert await at_lobby.next() == {"b": 1}
    finally:
        await disconnected(alice)


async def test_pipeline_runs_commands_in_one_request(cent: CentJs) -> None:
    channel = "chat:jspipe"
    results = await cent.resolved(
        "pipeline",
        [
            {"method": "publish", "params": {"channel": channel, "data": {"i": 0}}},
            {"method": "publish", "params": {"channel": channel, "data": {"i": 1}}},
            {"method": "history", "params": {"channel": channel, "limit": -1}},
        ],
    )
    first, second, history = results
    assert _is_position(first)
    assert second == {"offset": first["offset"] + 1, "epoch": first["epoch"]}
    assert [p["data"] for p in history["publications"]] == [{"i": 0}, {"i": 1}]


# --------------------------------------------------------------------------
# subscribe, unsubscribe, disconnect, refresh: control messages to every gateway
# --------------------------------------------------------------------------


async def test_subscribe_and_unsubscribe_reach_every_connection_of_the_user(api_stack: ApiStack, cent: CentJs) -> None:
    gw1, gw2 = api_stack.gateways
    events = (ServerSubscriptions(), ServerSubscriptions())
    carol = (sdk_client(ws_url(gw1), "carol", events=events[0]), sdk_client(ws_url(gw2), "carol", events=events[1]))
    await connected(*carol)
    try:
        assert await cent.resolved("subscribe", {"user": "carol", "channel": "chat:jssrv"}) == {}
        for seen in events:
            assert (await within(seen.subscribed.get())).channel == "chat:jssrv"
        assert await cent.resolved("unsubscribe", {"user": "carol", "channel": "chat:jssrv"}) == {}
        for seen in events:
            assert await within(seen.unsubscribed.get()) == "chat:jssrv"
    finally:
        await disconnected(*carol)


async def test_disconnect_closes_one_client_then_every_connection_with_the_code(
    api_stack: ApiStack, cent: CentJs
) -> None:
    gw1, gw2 = api_stack.gateways
    events = (ConnectionEvents(), ConnectionEvents())
    dave = (sdk_client(ws_url(gw1), "dave", events=events[0]), sdk_client(ws_url(gw2), "dave", events=events[1]))
    await connected(*dave)
    try:
        one = dave[1].client_id
        assert await cent.resolved("disconnect", {"user": "dave", "client": one}) == {}
        await events[1].wait_for_code(3503, 2)  # Centrifugo's default: force, no reconnect
        assert 3503 not in events[0].codes
        # `disconnect` is not in cent.js's types, but the client sends its argument as given.
        custom = {"user": "dave", "disconnect": {"code": 4501, "reason": "bye"}}
        assert await cent.resolved("disconnect", custom) == {}
        await events[0].wait_for_code(4501, 2)
    finally:
        await disconnected(*dave)


async def test_refresh_expired_closes_with_3005(api_stack: ApiStack, cent: CentJs) -> None:
    events = ConnectionEvents()
    erin = sdk_client(ws_url(api_stack.gateways[0]), "erin", events=events)
    await connected(erin)
    try:
        assert await cent.resolved("refresh", {"user": "erin", "expired": True}) == {}
        await events.wait_for_code(3005, 2)
    finally:
        await disconnected(erin)


# --------------------------------------------------------------------------
# presence, channels, info: cluster-wide
# --------------------------------------------------------------------------


async def test_presence_channels_and_info_see_both_gateways(api_stack: ApiStack, cent: CentJs) -> None:
    gw1, gw2 = api_stack.gateways
    alice, bob = sdk_client(ws_url(gw1), "alice"), sdk_client(ws_url(gw2), "bob")
    await connected(alice, bob)
    try:
        await subscribed(alice, "chat:jshere")
        await subscribed(bob, "chat:jshere")

        async def both_present() -> bool:
            stats = await cent.resolved("getPresenceStats", {"channel": "chat:jshere"})
            return bool(stats == {"num_clients": 2, "num_users": 2})

        await wait_until_async(both_present, 10, what="presence_stats of both clients", every=0.1)
        presence = await cent.resolved("getPresence", {"channel": "chat:jshere"})
        assert set(presence) == {"presence"}
        assert set(presence["presence"]) == {alice.client_id, bob.client_id}
        for client, info in presence["presence"].items():
            # Centrifugo's ClientInfo: client, user, conn_info and chan_info when set.
            assert {"client", "user"} <= set(info) <= {"client", "user", "conn_info", "chan_info"}
            assert info["client"] == client
        assert sorted(info["user"] for info in presence["presence"].values()) == ["alice", "bob"]

        channels = await cent.resolved("getChannels", {"pattern": "chat:jshe*"})
        assert channels == {"channels": {"chat:jshere": {"num_clients": 2}}}

        info = await cent.resolved("getInfo")
        assert set(info) == {"nodes"}
        gateways = [n for n in info["nodes"] if n["name"].startswith("gateway")]
        assert sorted(n["name"] for n in gateways) == ["gateway-1", "gateway-2"]
        for gateway in gateways:
            assert isinstance(gateway["uid"], str)
            assert gateway["uid"]
            assert isinstance(gateway["version"], str)
            assert gateway["version"]
            assert isinstance(gateway["uptime"], int)
            assert gateway["num_clients"] >= 1
            assert gateway["num_users"] >= 1
            assert gateway["num_channels"] >= 1
    finally:
        await disconnected(alice, bob)


# --------------------------------------------------------------------------
# error paths, as cent.js reports them
# --------------------------------------------------------------------------


async def test_a_reply_error_rejects_with_a_cent_exception_without_the_code(cent: CentJs) -> None:
    # The API answers Centrifugo's `{"error": {"code": 102, "message": "unknown channel"}}`
    # (broadcast above shows it); cent.js passes that object to Error(), which keeps
    # only its string form: the code is not reachable from the rejection.
    for method, argument in [
        ("publish", {"channel": "nope:x", "data": {}}),
        ("getHistory", {"channel": "lobby"}),  # 108: no history in the namespace
        ("disconnect", {"user": ""}),  # 107
    ]:
        rejection = await cent.rejected(method, argument)
        assert rejection == {
            "class": "CentException",
            "name": "Error",
            "message": "[object Object]",
            "centException": True,
            "own": {},
        }, (method, rejection)


async def test_a_wrong_key_rejects_with_the_json_error_of_the_empty_401(api_stack: ApiStack, cent: CentJs) -> None:
    alice = sdk_client(ws_url(api_stack.gateways[0]), "alice")
    await connected(alice)
    try:
        lobby = await subscribed(alice, "lobby")
        wrong = CentJs(cent.node, cent.url, "not-the-key")
        rejection = await wrong.rejected("publish", {"channel": "lobby", "data": {"from": "wrong key"}})
        # Centrifugo and the API answer 401 with an empty body; cent.js never looks at
        # the status, so what rejects is `res.json()` on nothing.
        assert rejection["class"] == "SyntaxError"
        assert rejection["centException"] is False
        assert "JSON" in rejection["message"]
        assert (await wrong.rejected("getInfo"))["class"] == "SyntaxError"
        # Nothing was published: the next publication the subscriber sees is the keyed one.
        assert await cent.resolved("publish", {"channel": "lobby", "data": {"from": "key"}}) == {}
        assert await lobby.next() == {"from": "key"}
    finally:
        await disconnected(alice)
