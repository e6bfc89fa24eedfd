"""Jaeger, the trace store the tracing tests (and ``make run TRACING=1``) export to.

`jaeger_binary` builds Jaeger's all-in-one (``cmd/jaeger`` of
``github.com/jaegertracing/jaeger`` v1.76.0, the OpenTelemetry-collector based
Jaeger v2 binary) once per machine into the tools cache (`reference.cache_root`),
under the same lock-and-stage scheme as the Centrifugo reference, and returns its
path. ``go install <module>/cmd/jaeger@v1.76.0`` refuses the module (its go.mod has
a ``replace`` directive), so the build downloads the module with ``go mod
download`` and runs ``go build ./cmd/jaeger`` inside it, where the directive holds.
The module ships without the UI's compiled assets: the UI at the query port is
Jaeger's placeholder page; the query API (``/api/traces``) is complete.
``python -m meshcast.testing.jaeger`` builds it and prints the path (``make jaeger``).

`JaegerProcess` runs it with `make run`'s configuration (``meshcast.devtools.jaeger``:
in-memory storage, OTLP over gRPC and HTTP, the query API) on free ports of
127.0.0.1, ready once ``/api/services`` answers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshcast.devtools.jaeger import JaegerPorts, render_config

from .builds import BuildUnavailable, run_build
from .nats import free_port
from .reference import _locked, cache_root, go_tool
from .spawn import spawn, stop_process
from .timeouts import timeout

MODULE = "github.com/jaegertracing/jaeger"
VERSION = "v1.76.0"
# A cold build (module download and compile) takes minutes on 2 cores; past this it has failed.
BUILD_SECONDS = 1500.0
_START_ATTEMPTS = 5
_BIND_FAILURES = ("address already in use", "bind:")


def binary_path(version: str = VERSION) -> Path:
    return cache_root() / f"jaeger-{version}" / "jaeger"


def jaeger_binary(version: str = VERSION, *, log: Any = None) -> Path:
    """The path of Jaeger `version`, built (once, under a lock) if missing;
    `BuildUnavailable` without Go or when the build fails.

    `log`, when given, receives one line before a build starts (minutes: say so)."""
    target = binary_path(version)
    if target.is_file() and os.access(target, os.X_OK):
        return target
    go = go_tool()
    if go is None:
        raise BuildUnavailable("go is not installed (Jaeger, the tracing tests' trace store, is built with go)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent.with_name(target.parent.name + ".lock")):
        if target.is_file():  # another process built it while this one waited
            return target
        if log is not None:
            log(f"building Jaeger {version} with go (once; cached in {target.parent})")
        _build(go, version, target)
    return target


def _build(go: str, version: str, target: Path) -> None:
    """Download the module, build ``./cmd/jaeger`` in it into a staging folder, rename into place."""
    staging = Path(tempfile.mkdtemp(prefix="build-", dir=target.parent))
    started = time.monotonic()
    try:
        env = {"GOFLAGS": "-mod=mod", "GOWORK": "off"}
        listing = staging / "module.json"
        with listing.open("w") as out:
            done = subprocess.run(
                [go, "mod", "download", "-json", f"{MODULE}@{version}"],
                cwd=staging,
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.PIPE,
                text=True,
                timeout=BUILD_SECONDS,
                check=False,
            )
        if done.returncode != 0:
            raise BuildUnavailable(f"go mod download {MODULE}@{version} failed:\n{done.stderr[-4000:]}")
        source = Path(json.loads(listing.read_text())["Dir"])
        left = BUILD_SECONDS - (time.monotonic() - started)
        argv = [go, "build", "-trimpath", "-o", str(staging / "jaeger"), "./cmd/jaeger"]
        run_build(argv, cwd=source, env={"GOFLAGS": "-mod=readonly", "GOWORK": "off"}, seconds=left)
        os.replace(staging / "jaeger", target)
        (target.parent / "build-seconds").write_text(f"{time.monotonic() - started:.1f}\n")
    except subprocess.TimeoutExpired as exc:
        raise BuildUnavailable(f"go mod download {MODULE}@{version} did not finish in {BUILD_SECONDS:g} s") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


_outcome: Path | BuildUnavailable | None = None


def prebuild(*, log: Any = None) -> Path | BuildUnavailable:
    """`jaeger_binary` once per test session (at collection, outside any test's
    timeout): its path, or the reason it cannot be had, kept for every test."""
    global _outcome
    if _outcome is None:
        try:
            _outcome = jaeger_binary(log=log)
        except BuildUnavailable as exc:
            _outcome = exc
    return _outcome


@dataclass
class JaegerProcess:
    """One Jaeger all-in-one (in-memory storage) with its config and log under `workdir`."""

    binary: Path
    workdir: Path
    host: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.workdir / "jaeger.log"

    @property
    def otlp_endpoint(self) -> str:
        """For OTEL_EXPORTER_OTLP_ENDPOINT (OTLP over gRPC)."""
        return f"http://{self.host}:{self.ports['otlp_grpc']}"

    @property
    def query_url(self) -> str:
        """The UI and the query API (``/api/...``)."""
        return f"http://{self.host}:{self.ports['query']}"

    def start(self, wait: float = 30.0) -> JaegerProcess:
        """Start on ports free at the time; a start whose port another process took
        in between is retried on new ports."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(_START_ATTEMPTS):
            self._spawn()
            try:
                self._wait_ready(time.monotonic() + timeout(wait))
                return self
            except RuntimeError:
                logs = self.logs()
                if attempt + 1 < _START_ATTEMPTS and any(s in logs for s in _BIND_FAILURES):
                    continue
                raise
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        self.ports = {name: free_port() for name in ("otlp_grpc", "otlp_http", "query", "query_grpc")}
        config = self.workdir / "jaeger.yaml"
        config.write_text(render_config(self.host, JaegerPorts(**self.ports), batch_timeout="50ms"))
        with self.log_path.open("wb") as log:
            self.process = spawn(
                [str(self.binary), "--config", str(config)], stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )

    def _wait_ready(self, deadline: float) -> None:
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"jaeger exited with {self.process.returncode}:\n{self.logs()[-3000:]}")
            try:
                self.get("/api/services")
                return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"jaeger not ready:\n{self.logs()[-3000:]}")
            time.sleep(0.05)

    def get(self, path: str, **query: str | int) -> Any:
        """One query API call: the decoded JSON answer."""
        url = self.query_url + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        with urllib.request.urlopen(url, timeout=timeout(2)) as resp:
            return json.loads(resp.read())

    def services(self) -> list[str]:
        return list(self.get("/api/services").get("data") or [])

    def traces(self, service: str, *, limit: int = 100, lookback: str = "1h") -> list[dict[str, Any]]:
        """Jaeger's traces with a span of `service` (each with its spans and processes)."""
        return list(self.get("/api/traces", service=service, limit=limit, lookback=lookback).get("data") or [])

    def trace(self, trace_id: str) -> dict[str, Any] | None:
        found = self.get(f"/api/traces/{trace_id}").get("data") or []
        return found[0] if found else None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, wait: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not stop in time."""
        proc, self.process = self.process, None
        stop_process(proc, timeout(wait))


def main() -> int:
    """Build (or find) Jaeger and print its path."""
    try:
        path = jaeger_binary(log=lambda line: print(line, file=sys.stderr, flush=True))
    except BuildUnavailable as exc:
        print(exc, file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
