"""The whole stack on one machine: nats-server with JetStream and N gateways.

Ctrl-C (or SIGTERM) stops every process it started, gateways first.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from meshcast.testing.nats import NatsServer
from meshcast.testing.processes import ServiceProcess

from .tokens import connection_token, dev_secret


class Stack:
    def __init__(
        self,
        root: Path,
        *,
        gateways: int,
        nats_port: int,
        first_port: int,
        history_port: int,
        presence_port: int,
        namespaces: Path,
    ) -> None:
        self.run_dir = root / ".run"
        self.logs = self.run_dir / "logs"
        self.gateways = gateways
        self.nats_port = nats_port
        self.first_port = first_port
        self.history_port = history_port
        self.presence_port = presence_port
        self.namespaces = namespaces
        self.nats: NatsServer | None = None
        self.services: list[ServiceProcess] = []

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        secret = os.environ.get("MESHCAST_TOKEN_HMAC_SECRET") or dev_secret(self.run_dir)
        self.nats = NatsServer(self.run_dir / "nats", name="nats", port=self.nats_port).start(wait=20)
        for module, port in (("meshcast.history", self.history_port), ("meshcast.presence", self.presence_port)):
            service = ServiceProcess(
                module,
                {
                    "MESHCAST_NATS_URL": self.nats.url,
                    "MESHCAST_NAMESPACES_FILE": str(self.namespaces),
                    "MESHCAST_HEALTH_PORT": str(port),
                },
                self.logs / f"{module.rpartition('.')[2]}.log",
                health_url=f"http://127.0.0.1:{port}/ready",
            )
            self.services.append(service.start(wait=30))
        for i in range(self.gateways):
            port = self.first_port + i
            env = {
                "MESHCAST_NATS_URL": self.nats.url,
                "MESHCAST_GATEWAY_PORT": str(port),
                "MESHCAST_TOKEN_HMAC_SECRET": secret,
                "MESHCAST_NAMESPACES_FILE": str(self.namespaces),
                "MESHCAST_NODE_NAME": f"gateway-{i + 1}",
            }
            proc = ServiceProcess(
                "meshcast.gateway",
                env,
                self.logs / f"gateway-{i + 1}.log",
                health_url=f"http://127.0.0.1:{port}/health",
            )
            self.services.append(proc.start(wait=30))

    def describe(self) -> str:
        secret = os.environ.get("MESHCAST_TOKEN_HMAC_SECRET") or dev_secret(self.run_dir)
        lines = ["", "Meshcast is running.", f"  NATS:       {self.nats.url if self.nats else '-'}"]
        for i in range(self.gateways):
            port = self.first_port + i
            lines.append(f"  gateway-{i + 1}:  ws://127.0.0.1:{port}/connection/websocket")
            lines.append(f"              http://127.0.0.1:{port}/health  /ready  /metrics")
        lines += [
            f"  history:    http://127.0.0.1:{self.history_port}/ready  /metrics",
            f"  presence:   http://127.0.0.1:{self.presence_port}/ready  /metrics",
            f"  logs:       {self.logs}",
            "  dev token (user 'dev', 24 h; `make token USER=alice` for others):",
            f"    {connection_token(secret, 'dev', ttl=86400)}",
            "Ctrl-C stops everything.",
            "",
        ]
        return "\n".join(lines)

    def crashed(self) -> str | None:
        for proc in self.services:
            if proc.process is not None and proc.process.poll() is not None:
                return f"{proc.module} exited with {proc.process.returncode}; see {proc.log_path}"
        if self.nats is not None and self.nats.process is not None and self.nats.process.poll() is not None:
            return f"nats-server exited; see {self.nats.log_path}"
        return None

    def stop(self) -> None:
        # Gateways first (their clients reconnect elsewhere), then the services, then NATS.
        for proc in reversed(self.services):
            proc.terminate()
        if self.nats is not None:
            self.nats.stop()


def run(
    root: Path,
    *,
    gateways: int,
    nats_port: int,
    first_port: int,
    history_port: int,
    presence_port: int,
    namespaces: Path,
) -> int:
    stack = Stack(
        root,
        gateways=gateways,
        nats_port=nats_port,
        first_port=first_port,
        history_port=history_port,
        presence_port=presence_port,
        namespaces=namespaces,
    )
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start()
        print(stack.describe(), flush=True)
        while not stopping:
            problem = stack.crashed()
            if problem:
                print(f"stopping: {problem}", file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 0
    except (RuntimeError, TimeoutError) as exc:
        print(f"make run failed: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping...", file=sys.stderr)
        stack.stop()
