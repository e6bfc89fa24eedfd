"""``python -m meshcast.devtools run|token|api-key|admin-secret|webhook-secret|nats-url|nats-config``: what
`make run`, `make token`, `make api-key`, `make admin-secret`, `make webhook-secret` and `make nats-url` call.

Every command finds the run folder as ``meshcast.devtools.runfolder`` says, from
any directory; only `run` creates anything in it. A `DevtoolsError` is one line
on stderr and exit 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Final

from meshcast.common.natsauth import BACKEND, USERS, url_with_credentials

from .apikey import stored_admin_secret, stored_api_key
from .backoff import BackoffPolicy
from .errors import DevtoolsError
from .examples import find_example
from .jaeger import OTLP_PORT, QUERY_PORT, JaegerPorts
from .natsusers import DEPLOYMENT_CONFIGS, stale_configs, stored_password, write_configs
from .preflight import last_run
from .runfolder import RUN_DIR_ENV, project_root, run_folder
from .stack import DEFAULT_HOST, HOST_ENV, Stack, run
from .tokens import connection_token, stored_secret
from .webhooks import stored_webhook_secret

PROG: Final = "meshcast.devtools"
NEEDS_VENV: Final = (
    "Needs the project's venv (`make install` makes it): run it as `.venv/bin/python -m meshcast.devtools ...`"
    " or through make (`make run`, `make token`, `make api-key`, `make nats-url`); another python has no"
    " meshcast packages. Works from any directory: the run folder is the checkout's .run/ unless --root or"
    f" {RUN_DIR_ENV} says otherwise; only `run` creates it."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=NEEDS_VENV)
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help=f"project root whose .run/ to use (default: {RUN_DIR_ENV}, else the checkout this package is from)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run_cmd = commands.add_parser("run", help="start nats-server and the gateways", description=NEEDS_VENV)
    run_cmd.add_argument("--gateways", type=int, default=1)
    run_cmd.add_argument("--nats-port", type=int, default=4222)
    run_cmd.add_argument("--port", type=int, default=8000, help="port of the first gateway")
    run_cmd.add_argument("--history-port", type=int, default=8090, help="history service health/metrics port")
    run_cmd.add_argument("--presence-port", type=int, default=8091, help="presence service health/metrics port")
    run_cmd.add_argument("--events-port", type=int, default=8094, help="events service health/metrics port")
    run_cmd.add_argument(
        "--webhooks-port", type=int, default=8095, help="webhook relay health/metrics port (with MESHCAST_WEBHOOK_URL)"
    )
    run_cmd.add_argument("--auth-port", type=int, default=8092, help="auth service health/JWKS port")
    run_cmd.add_argument("--grpc-port", type=int, default=9090, help="auth service gRPC port")
    run_cmd.add_argument("--api-port", type=int, default=9000, help="server API HTTP port")
    run_cmd.add_argument("--api-grpc-port", type=int, default=10000, help="server API gRPC port")
    run_cmd.add_argument("--api-health-port", type=int, default=8093, help="server API health/metrics port")
    run_cmd.add_argument(
        "--namespaces", type=Path, default=None, help="default: the example's, else the root's config/namespaces.yaml"
    )
    run_cmd.add_argument(
        "--example", default=None, help="also run this example backend of examples/ (make run EXAMPLE=chat)"
    )
    run_cmd.add_argument(
        "--host",
        default=os.environ.get(HOST_ENV) or DEFAULT_HOST,
        help=f"address every service listens on (env {HOST_ENV}; default {DEFAULT_HOST}; 0.0.0.0: every interface)",
    )
    run_cmd.add_argument(
        "--jaeger",
        default=None,
        help="path of a Jaeger all-in-one binary: run it and trace every service into it (make run TRACING=1);"
        " empty: Jaeger could not be built, run without it",
    )
    run_cmd.add_argument("--jaeger-port", type=int, default=QUERY_PORT, help="Jaeger UI and query API port")
    run_cmd.add_argument("--otlp-port", type=int, default=OTLP_PORT, help="Jaeger OTLP gRPC port (HTTP: the next)")
    run_cmd.add_argument(
        "--restart-delay", type=float, default=0.5, help="seconds before the first restart of a service that exited"
    )
    run_cmd.add_argument(
        "--restart-delay-max", type=float, default=30.0, help="cap of the restart delay, which doubles per restart"
    )
    run_cmd.add_argument(
        "--restart-reset",
        type=float,
        default=30.0,
        help="seconds a service must stay up for its restart delay to start over",
    )
    token_cmd = commands.add_parser(
        "token", help="print a connection token for the running stack", description=NEEDS_VENV
    )
    token_cmd.add_argument("--user", default="dev")
    token_cmd.add_argument("--ttl", type=float, default=3600)
    commands.add_parser("api-key", help="print the server API key of the running stack", description=NEEDS_VENV)
    commands.add_parser(
        "admin-secret", help="print the admin UI's secret (/admin) of the running stack", description=NEEDS_VENV
    )
    commands.add_parser(
        "webhook-secret", help="print the webhook signing secret of the running stack", description=NEEDS_VENV
    )
    url_cmd = commands.add_parser(
        "nats-url", help="print the NATS URL (with credentials) of a user of `make run`", description=NEEDS_VENV
    )
    url_cmd.add_argument("--user", choices=USERS, default=BACKEND)
    url_cmd.add_argument(
        "--nats-port", type=int, default=None, help="default: the port of the running (or last) `make run`"
    )
    conf_cmd = commands.add_parser(
        "nats-config", help="check or refresh the NATS users block of the compose and Kubernetes configs"
    )
    conf_mode = conf_cmd.add_mutually_exclusive_group(required=True)
    conf_mode.add_argument("--check", action="store_true", help="exit 1 when a config is stale")
    conf_mode.add_argument("--write", action="store_true", help="rewrite the stale configs")
    opts = parser.parse_args(argv)
    try:
        return _command(parser, opts)
    except DevtoolsError as exc:
        print(f"{PROG} {opts.command}: {exc}", file=sys.stderr)
        return 1


def _jaeger(path: str | None) -> Path | None:
    """The Jaeger binary `--jaeger` names; None (and why, on stderr) when it is empty."""
    if path is None:
        return None
    if not path.strip():
        print(f"{PROG} run: Jaeger could not be built (see above); running without tracing", file=sys.stderr)
        return None
    return Path(path.strip())


def _command(parser: argparse.ArgumentParser, opts: argparse.Namespace) -> int:
    run_dir = run_folder(opts.root)
    if opts.command == "run":
        if opts.gateways < 1:
            parser.error("--gateways must be at least 1")
        try:
            backoff = BackoffPolicy(opts.restart_delay, opts.restart_delay_max, opts.restart_reset)
        except ValueError as exc:
            parser.error(f"--restart-delay/--restart-delay-max/--restart-reset: {exc}")
        root = project_root(opts.root)
        example = find_example(root, opts.example) if opts.example else None
        default_namespaces = example.namespaces if example is not None else root / "config" / "namespaces.yaml"
        namespaces = (opts.namespaces or default_namespaces).resolve()
        stack = Stack(
            run_dir,
            gateways=opts.gateways,
            nats_port=opts.nats_port,
            first_port=opts.port,
            history_port=opts.history_port,
            presence_port=opts.presence_port,
            events_port=opts.events_port,
            webhooks_port=opts.webhooks_port,
            auth_port=opts.auth_port,
            grpc_port=opts.grpc_port,
            api_port=opts.api_port,
            api_grpc_port=opts.api_grpc_port,
            api_health_port=opts.api_health_port,
            namespaces=namespaces,
            host=opts.host,
            backoff=backoff,
            example=example,
            jaeger=_jaeger(opts.jaeger),
            jaeger_ports=JaegerPorts(opts.otlp_port, opts.otlp_port + 1, opts.jaeger_port, opts.jaeger_port - 1),
        )
        return run(stack)
    if opts.command == "api-key":
        print(stored_api_key(run_dir))
        return 0
    if opts.command == "admin-secret":
        print(stored_admin_secret(run_dir))
        return 0
    if opts.command == "webhook-secret":
        print(stored_webhook_secret(run_dir))
        return 0
    if opts.command == "nats-url":
        password = stored_password(run_dir, opts.user)
        address = f"127.0.0.1:{opts.nats_port}" if opts.nats_port else last_run(run_dir).get("nats", "127.0.0.1:4222")
        print(url_with_credentials(f"nats://{address}", opts.user, password))
        return 0
    if opts.command == "nats-config":
        root = project_root(opts.root)
        if opts.write:
            for path in write_configs(root):
                print(f"rewrote {path}")
            return 0
        stale = stale_configs(root)
        for path in stale:
            print(f"stale: {path} (python -m meshcast.devtools nats-config --write)", file=sys.stderr)
        if not stale:
            print("up to date: " + ", ".join(DEPLOYMENT_CONFIGS))
        return 1 if stale else 0
    print(connection_token(stored_secret(run_dir), opts.user, ttl=opts.ttl))
    return 0


if __name__ == "__main__":
    sys.exit(main())
