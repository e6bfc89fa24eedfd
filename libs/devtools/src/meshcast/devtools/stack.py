"""The whole stack on one machine: nats-server with JetStream, the history,
presence and auth services, and N gateways.

nats-server requires a user per service (``meshcast.common.natsauth``): each
service connects with its own credentials, permissions and inbox prefix
(``_INBOX_<user>``), and the banner prints the `backend` user's URL and inbox
prefix for the developer's own backends.

Ctrl-C (or SIGTERM) stops every process it started, gateways first.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from meshcast.common.natsauth import (
    AUTH,
    BACKEND,
    GATEWAY,
    HISTORY,
    PRESENCE,
    inbox_prefix,
    render_authorization,
    url_with_credentials,
)
from meshcast.testing.nats import NatsServer
from meshcast.testing.processes import ServiceProcess

from .natsusers import PASSWORDS_FILE, dev_passwords
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
        auth_port: int = 8092,
        grpc_port: int = 9090,
    ) -> None:
        self.run_dir = root / ".run"
        self.auth_port = auth_port
        self.grpc_port = grpc_port
        self.logs = self.run_dir / "logs"
        self.gateways = gateways
        self.nats_port = nats_port
        self.first_port = first_port
        self.history_port = history_port
        self.presence_port = presence_port
        self.namespaces = namespaces
        self.nats: NatsServer | None = None
        self.services: list[ServiceProcess] = []
        self.nats_passwords: dict[str, str] = {}

    def nats_url(self, user: str) -> str:
        """The running nats-server's URL with `user`'s credentials."""
        if self.nats is None:
            raise RuntimeError("nats-server is not running")
        return url_with_credentials(self.nats.url, user, self.nats_passwords[user])

    def nats_env(self, user: str) -> dict[str, str]:
        """A service's NATS settings as `user`: the URL with its credentials, its inbox prefix."""
        return {"MESHCAST_NATS_URL": self.nats_url(user), "MESHCAST_NATS_INBOX_PREFIX": inbox_prefix(user)}

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        secret = os.environ.get("MESHCAST_TOKEN_HMAC_SECRET") or dev_secret(self.run_dir)
        self.nats_passwords = dev_passwords(self.run_dir)
        self.nats = NatsServer(
            self.run_dir / "nats",
            name="nats",
            port=self.nats_port,
            authorization=render_authorization(self.nats_passwords),
        ).start(wait=20)
        for user, module, port in (
            (HISTORY, "meshcast.history", self.history_port),
            (PRESENCE, "meshcast.presence", self.presence_port),
        ):
            service = ServiceProcess(
                module,
                {
                    **self.nats_env(user),
                    "MESHCAST_NAMESPACES_FILE": str(self.namespaces),
                    "MESHCAST_HEALTH_PORT": str(port),
                },
                self.logs / f"{module.rpartition('.')[2]}.log",
                health_url=f"http://127.0.0.1:{port}/ready",
            )
            self.services.append(service.start(wait=30))
        auth = ServiceProcess(
            "meshcast.auth",
            {
                **self.nats_env(AUTH),
                "MESHCAST_TOKEN_HMAC_SECRET": secret,
                "MESHCAST_HEALTH_PORT": str(self.auth_port),
                "MESHCAST_GRPC_PORT": str(self.grpc_port),
            },
            self.logs / "auth.log",
            health_url=f"http://127.0.0.1:{self.auth_port}/ready",
        )
        self.services.append(auth.start(wait=30))
        for i in range(self.gateways):
            port = self.first_port + i
            env = {
                **self.nats_env(GATEWAY),
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
        lines = [
            "",
            "Meshcast is running.",
            f"  NATS:       {self.nats_url(BACKEND) if self.nats else '-'}",
            f"              (user '{BACKEND}' for your backends, inbox prefix {inbox_prefix(BACKEND)};",
            f"              each service has its own user, passwords in {self.run_dir / PASSWORDS_FILE})",
        ]
        for i in range(self.gateways):
            port = self.first_port + i
            lines.append(f"  gateway-{i + 1}:  ws://127.0.0.1:{port}/connection/websocket")
            lines.append(f"              http://127.0.0.1:{port}/health  /ready  /metrics")
        lines += [
            f"  history:    http://127.0.0.1:{self.history_port}/ready  /metrics",
            f"  presence:   http://127.0.0.1:{self.presence_port}/ready  /metrics",
            f"  auth:       grpc 127.0.0.1:{self.grpc_port} (meshcast.auth.v1.AuthService)",
            f"              http://127.0.0.1:{self.auth_port}/.well-known/jwks.json  /ready  /metrics",
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
    auth_port: int = 8092,
    grpc_port: int = 9090,
) -> int:
    stack = Stack(
        root,
        gateways=gateways,
        nats_port=nats_port,
        first_port=first_port,
        history_port=history_port,
        presence_port=presence_port,
        namespaces=namespaces,
        auth_port=auth_port,
        grpc_port=grpc_port,
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
