"""The unmodified centrifuge-go SDK (v0.12.1) against two gateways, history and presence,
in JSON and in protobuf: ``tests/e2e/sdk/go/main.go``, one JSON line per step.

Client A is on gateway A, B on gateway B: each sees the other's publications; A reads
history, presence and presence stats; C gets a server-side subscription from its
token's ``subs``; A recovers what B published while gateway A restarted; R connects
with a short-lived token from a ``GetToken`` callback and stays connected through
its refreshes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meshcast.testing import ServiceProcess, ws_url

from . import sdk_programs
from .conftest import SECRET
from .sdk_programs import ScenarioRun, run_scenario

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def go_program() -> Path:
    return sdk_programs.program("go")


def value(n: int, sender: str) -> dict[str, object]:
    return {"n": n, "from": sender}


def assert_scenario(run: ScenarioRun, fmt: str) -> None:
    connect = run.step("connect")
    for client in ("a", "b", "r"):
        assert connect[f"{client}_client"], f"the connect reply gives {client} a client id: {connect}"

    subscribed = run.step("subscribe")
    assert subscribed["recoverable"] is True, f"a recovery namespace's subscription is recoverable: {subscribed}"
    assert subscribed["positioned"] is True, subscribed
    assert subscribed.get("epoch"), f"a history channel has an epoch: {subscribed}"

    across = run.step("publish_across_gateways")
    expected = [value(1, "b"), value(2, "a")]
    assert across["a_received"] == expected, f"A (gateway A) sees B's publication, in order: {across}"
    assert across["b_received"] == expected, f"B (gateway B) sees A's publication, in order: {across}"
    assert across["a_publishers"] == ["go-b", "go-a"], f"publications carry the publisher's info: {across}"

    history = run.step("history")
    assert history["publications"] == expected, f"history holds both publications: {history}"
    assert history["offsets"] == sorted(history["offsets"]), history
    assert history["epoch"] == history["subscribed_epoch"], f"history's epoch is the subscription's: {history}"
    assert history["offset"] >= history["offsets"][-1], history

    presence = run.step("presence")
    assert presence["users"] == ["go-a", "go-b"], f"presence lists both gateways' subscribers: {presence}"
    stats = run.step("presence_stats")
    assert (stats["num_clients"], stats["num_users"]) == (2, 2), stats

    server_side = run.step("server_side_subscription")
    channel = f"chat:go-server-{fmt}"
    assert server_side["channel"] == channel, f"the token's subs subscribe the client: {server_side}"
    assert server_side["received_channel"] == channel, server_side
    assert server_side["received"] == value(3, "b"), server_side

    recovery = run.step("recovery_after_gateway_restart")
    assert recovery["was_recovering"] is True, f"the SDK resubscribes with recovery: {recovery}"
    assert recovery["recovered"] is True, f"the gateway says recovered: {recovery}"
    assert recovery["received"] == recovery["expected"], f"every publication made while away, in order: {recovery}"

    refresh = run.step("token_refresh")
    assert refresh["get_token_calls"] >= 3, f"connect, then refreshes the gateway accepted: {refresh}"
    assert refresh["codes"] == [], f"no disconnect, no reconnect: {refresh}"
    assert refresh["errors"] == [], f"no refresh error: {refresh}"
    assert refresh["state"] == "connected", refresh

    run.step("done")
    assert run.returncode == 0, run.transcript()


@pytest.mark.parametrize("fmt", ["json", "protobuf"])
def test_centrifuge_go_across_gateways_with_history_presence_recovery_and_refresh(
    go_program: Path, two_gateways: tuple[ServiceProcess, ServiceProcess], fmt: str
) -> None:
    gateway_a, gateway_b = two_gateways
    argv = [str(go_program), "-format", fmt, "-a", ws_url(gateway_a), "-b", ws_url(gateway_b)]
    run = run_scenario(argv, gateway_a, env={"MESHCAST_SDK_SECRET": SECRET}, seconds=60)
    assert_scenario(run, fmt)
