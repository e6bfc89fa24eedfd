"""The e2e programs of the unmodified centrifuge-go and centrifuge-java SDKs
(``tests/e2e/sdk/go``, ``tests/e2e/sdk/java``): their cached builds and one run.

Each program is built once per machine and per source digest into
``~/.cache/meshcast/tools/`` (`meshcast.testing.builds`), during collection
(``conftest.py``), outside any test's timeout: cold, the build fetches the SDK from
the Go module proxy or Maven Central. A program that cannot be built (no `go` or
`mvn`, a registry out of reach) skips its tests on a developer's machine and fails
them in CI, like the Centrifugo reference; ``MESHCAST_SKIP_SDKS=go,java`` (either
or both) skips them everywhere, CI included, for a runner that cannot reach those
registries.

A run (`run_scenario`) prints one JSON line per step; the test restarts gateway A
when the program asks (``{"await": "gateway_a_down"}`` / ``"gateway_a_up"``) and
answers on its stdin.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from meshcast.testing import ServiceProcess, timeout
from meshcast.testing.builds import BuildUnavailable, cached_build, run_build
from meshcast.testing.reference import go_tool
from meshcast.testing.tools import unavailable

SDK_DIR = Path(__file__).parent / "sdk"
GO_DIR = SDK_DIR / "go"
JAVA_DIR = SDK_DIR / "java"
SKIP_ENV = "MESHCAST_SKIP_SDKS"

Log = Callable[[str], None]


def go_program(log: Log | None = None) -> Path:
    """The centrifuge-go e2e binary (``go build``, modules from the proxy, pinned by go.sum)."""
    go = go_tool()
    if go is None:
        raise BuildUnavailable("go is not installed (the centrifuge-go e2e program is built with go build)")

    def build(staging: Path) -> None:
        # No -trimpath: the build cache it shares with the Centrifugo reference's build stays warm.
        env = {"GOFLAGS": "-mod=mod -buildvcs=false", "GOWORK": "off", "GOTOOLCHAIN": "local"}
        run_build([go, "build", "-o", str(staging / "sdkgo"), "."], cwd=GO_DIR, env=env)

    return cached_build("centrifuge-go-e2e", GO_DIR, ["go.mod", "go.sum", "main.go"], "sdkgo", build, log=log)


JAVA_SOURCES = ["pom.xml", "src/main/java/dev/meshcast/e2e/SdkJava.java"]


def java_program(log: Log | None = None) -> Path:
    """The centrifuge-java e2e jar (``mvn package``: one jar with its dependencies)."""
    mvn = shutil.which("mvn")
    if mvn is None or shutil.which("java") is None:
        raise BuildUnavailable("mvn or java is not installed (the centrifuge-java e2e program is built with Maven)")

    def build(staging: Path) -> None:
        # A copy of the sources: Maven writes target/ beside its pom, and the tree is shared.
        work = staging / "src"
        shutil.copytree(JAVA_DIR, work, ignore=shutil.ignore_patterns("target"))
        run_build([mvn, "-q", "-B", "package", "-DskipTests"], cwd=work)
        shutil.copy(work / "target" / "sdkjava.jar", staging / "sdkjava.jar")

    return cached_build("centrifuge-java-e2e", JAVA_DIR, JAVA_SOURCES, "sdkjava.jar", build, log=log)


BUILDERS: dict[str, Callable[..., Path]] = {"go": go_program, "java": java_program}
# Which test module needs which program.
MODULES = {"test_sdk_go.py": "go", "test_sdk_java.py": "java"}
_built: dict[str, Path | BuildUnavailable] = {}


def opted_out(sdk: str) -> bool:
    return sdk in {part.strip().lower() for part in os.environ.get(SKIP_ENV, "").split(",")}


def prebuild(sdk: str, log: Log | None = None) -> None:
    """Build `sdk`'s program now (at collection), keeping the failure for its tests."""
    if sdk in _built or opted_out(sdk):
        return
    try:
        _built[sdk] = BUILDERS[sdk](log=log)
    except BuildUnavailable as exc:
        _built[sdk] = exc


def program(sdk: str) -> Path:
    """`sdk`'s program for a test: built, or the test skips (fails in CI)."""
    if opted_out(sdk):
        pytest.skip(f"{SKIP_ENV} includes {sdk}")
    prebuild(sdk)
    found = _built[sdk]
    if isinstance(found, BuildUnavailable):
        unavailable(f"{found}\n(set {SKIP_ENV}={sdk} to skip these tests where the registry is out of reach)")
    return found


@dataclass
class ScenarioRun:
    """What a program printed: its steps by name, and how it ended."""

    argv: list[str]
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    stderr: str = ""
    returncode: int | None = None

    def step(self, name: str) -> dict[str, Any]:
        """The step's result, asserted to have run and succeeded."""
        result = self.steps.get(name)
        assert result is not None, f"step {name!r} never ran:\n{self.transcript()}"
        assert result.get("ok") is True, f"step {name!r} failed: {result.get('error')}\n{self.transcript()}"
        return result

    def transcript(self) -> str:
        return "\n".join([*self.lines[-40:], f"exit: {self.returncode}", "stderr:", self.stderr[-3000:]])


def run_scenario(argv: list[str], gateway_a: ServiceProcess, *, env: dict[str, str], seconds: float) -> ScenarioRun:
    """Run a program to its end (at most the scaled `seconds`), restarting `gateway_a`
    (SIGTERM, then a start on the same port) when it asks."""
    run = ScenarioRun(argv)
    with tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, **env},
        )
        assert proc.stdout is not None
        assert proc.stdin is not None
        lines: queue.Queue[str | None] = queue.Queue()

        def read(stream: Any = proc.stdout) -> None:
            for line in stream:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout(seconds)
        try:
            while (line := lines.get(timeout=max(0.0, deadline - time.monotonic()))) is not None:
                run.lines.append(line)
                _handle(run, line, gateway_a, proc.stdin)
            run.returncode = proc.wait(timeout(10))
        except (queue.Empty, subprocess.TimeoutExpired):
            run.lines.append(f"(the test stopped the program after {timeout(seconds):g} s)")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout(5))
            run.returncode = proc.returncode
            reader.join(timeout(5))
            stderr.seek(0)
            run.stderr = stderr.read()
    return run


def _handle(run: ScenarioRun, line: str, gateway_a: ServiceProcess, stdin: Any) -> None:
    try:
        event = json.loads(line)
    except ValueError:
        return  # an SDK's own log line
    if not isinstance(event, dict):
        return
    if "step" in event:
        run.steps[event["step"]] = event
    elif event.get("await") == "gateway_a_down":
        gateway_a.terminate()
        stdin.write("down\n")
        stdin.flush()
    elif event.get("await") == "gateway_a_up":
        gateway_a.start()
        stdin.write("up\n")
        stdin.flush()


def value(n: int, sender: str) -> dict[str, object]:
    return {"n": n, "from": sender}


def assert_scenario(run: ScenarioRun, sdk: str, server_channel: str) -> None:
    """Every step of the Go and Java programs, in order; users are `sdk`-a, -b, -c, -r."""
    connect = run.step("connect")
    for client in ("a", "b", "r"):
        assert connect[f"{client}_client"], f"the connect reply gives {client} a client id: {connect}"

    subscribed = run.step("subscribe")
    assert subscribed["recoverable"] is True, f"a recovery namespace's subscription is recoverable: {subscribed}"
    assert subscribed["positioned"] is True, subscribed

    across = run.step("publish_across_gateways")
    expected = [value(1, "b"), value(2, "a")]
    assert across["a_received"] == expected, f"A (gateway A) sees B's publication, in order: {across}"
    assert across["b_received"] == expected, f"B (gateway B) sees A's publication, in order: {across}"
    assert across["a_publishers"] == [f"{sdk}-b", f"{sdk}-a"], f"publications carry the publisher's info: {across}"

    history = run.step("history")
    assert history["publications"] == expected, f"history holds both publications: {history}"
    assert history["offsets"] == sorted(history["offsets"]), history
    assert history["epoch"], f"a history channel has an epoch: {history}"
    assert history["offset"] >= history["offsets"][-1], history

    presence = run.step("presence")
    assert presence["users"] == [f"{sdk}-a", f"{sdk}-b"], f"presence lists both gateways' subscribers: {presence}"
    stats = run.step("presence_stats")
    assert (stats["num_clients"], stats["num_users"]) == (2, 2), stats

    server_side = run.step("server_side_subscription")
    assert server_side["channel"] == server_channel, f"the token's subs subscribe the client: {server_side}"
    assert server_side["received_channel"] == server_channel, server_side
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
