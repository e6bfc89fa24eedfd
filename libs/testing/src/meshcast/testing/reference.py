"""Centrifugo, the reference the conformance suite compares Meshcast with.

`centrifugo_binary` builds ``github.com/centrifugal/centrifugo/v6`` at one pinned
release with ``go install`` into a per-user cache and returns its path; a binary
already there is reused, so it is built once per machine (cold: minutes, see
``docs/compatibility.md``). A lock file keeps two test processes (or ``make`` and
pytest) from building at once: the second waits and then finds the binary.
``python -m meshcast.testing.reference`` builds it and prints the path (``make
reference``).

`CentrifugoProcess` runs the binary with a generated JSON config on free ports
(memory engine), ready once ``/health`` answers.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .nats import free_port
from .spawn import spawn, stop_process
from .timeouts import timeout

MODULE = "github.com/centrifugal/centrifugo/v6"
# The release the Go module proxy serves here (see the conformance docs).
VERSION = "v6.9.1"
# `go install` leaves Centrifugo's version at 0.0.0: stamp the real one, as its release builds do.
_LDFLAGS = f"-X {MODULE}/internal/build.Version={VERSION.removeprefix('v')}"
_BIND_FAILURES = ("address already in use", "bind:")
_START_ATTEMPTS = 5


class ReferenceUnavailable(RuntimeError):
    """The reference cannot be had here (no Go toolchain) or its build failed."""


def cache_root() -> Path:
    """``$MESHCAST_TOOLS_CACHE``, else ``$XDG_CACHE_HOME/meshcast/tools``, else ``~/.cache/meshcast/tools``."""
    explicit = os.environ.get("MESHCAST_TOOLS_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "meshcast" / "tools"


def binary_path(version: str = VERSION) -> Path:
    return cache_root() / f"centrifugo-{version}" / "centrifugo"


def go_tool() -> str | None:
    """The `go` command: on PATH, or where the official tarball puts it."""
    found = shutil.which("go")
    if found is None and Path("/usr/local/go/bin/go").exists():
        found = "/usr/local/go/bin/go"
    return found


def centrifugo_binary(version: str = VERSION, *, log: Any = None) -> Path:
    """The path of Centrifugo `version`, built (once, under a lock) if missing.

    `log`, when given, is a callable that receives one line before a build starts
    (the build takes minutes on a fresh machine: say so)."""
    target = binary_path(version)
    if _usable(target):
        return target
    go = go_tool()
    if go is None:
        raise ReferenceUnavailable(
            "go is not installed (Centrifugo, the conformance reference, is built with go install)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent.with_name(target.parent.name + ".lock")):
        if _usable(target):  # another process built it while this one waited
            return target
        if log is not None:
            log(f"building Centrifugo {version} with go install (once; cached in {target.parent})")
        _build(go, version, target)
    return target


def _usable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(go: str, version: str, target: Path) -> None:
    """`go install` into a staging directory beside `target`, then one rename: a build
    that is killed half-way never leaves a binary that looks finished."""
    staging = Path(tempfile.mkdtemp(prefix="build-", dir=target.parent))
    try:
        env = {
            **os.environ,
            "GOBIN": str(staging),
            "GOFLAGS": " ".join(filter(None, [os.environ.get("GOFLAGS", ""), "-mod=mod"])),
        }
        argv = [go, "install", f"-ldflags={_LDFLAGS}", f"{MODULE}@{version}"]
        started = time.monotonic()
        done = subprocess.run(argv, env=env, cwd=staging, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ReferenceUnavailable(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
        os.replace(staging / "centrifugo", target)
        (target.parent / "build-seconds").write_text(f"{time.monotonic() - started:.1f}\n")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@dataclass
class CentrifugoProcess:
    """One Centrifugo process with `config` (a JSON-shaped dict) and its logs under `workdir`.

    `start` fills in the ports (HTTP server: WebSocket, HTTP API and /health; gRPC API
    when ``grpc_api.enabled``), each free at the time; a start whose port another
    process took in between is retried on new ports."""

    binary: Path
    workdir: Path
    config: dict[str, Any]
    http_port: int = 0
    grpc_port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.workdir / "centrifugo.log"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}/connection/websocket"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/api"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, wait: float = 30.0) -> CentrifugoProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(_START_ATTEMPTS):
            self._spawn()
            try:
                self._wait_healthy(time.monotonic() + timeout(wait))
                return self
            except RuntimeError:
                logs = self.logs()
                if attempt + 1 < _START_ATTEMPTS and any(s in logs for s in _BIND_FAILURES):
                    continue
                raise
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        self.http_port = free_port()
        config = json.loads(json.dumps(self.config))
        config.setdefault("http_server", {}).update(address="127.0.0.1", port=self.http_port)
        config.setdefault("health", {})["enabled"] = True
        if config.get("grpc_api", {}).get("enabled"):
            self.grpc_port = free_port()
            config["grpc_api"].update(address="127.0.0.1", port=self.grpc_port)
        path = self.workdir / "config.json"
        path.write_text(json.dumps(config, indent=2))
        with self.log_path.open("wb") as log:
            self.process = spawn(
                [str(self.binary), "--config", str(path)], stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )

    def _wait_healthy(self, deadline: float) -> None:
        url = f"http://127.0.0.1:{self.http_port}/health"
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"centrifugo exited with {self.process.returncode}:\n{self.logs()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=timeout(1)) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"centrifugo not healthy:\n{self.logs()[-3000:]}")
            time.sleep(0.05)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, wait: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not stop in time."""
        proc, self.process = self.process, None
        stop_process(proc, timeout(wait))


def main() -> int:
    """Build (or find) the reference and print its path."""
    try:
        path = centrifugo_binary(log=lambda line: print(line, file=sys.stderr, flush=True))
    except ReferenceUnavailable as exc:
        print(exc, file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
