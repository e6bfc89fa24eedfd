"""``python -m meshcast.devtools run|token``: what `make run` and `make token` call."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .stack import run
from .tokens import connection_token, dev_secret


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshcast.devtools")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root (holds .run/)")
    commands = parser.add_subparsers(dest="command", required=True)
    run_cmd = commands.add_parser("run", help="start nats-server and the gateways")
    run_cmd.add_argument("--gateways", type=int, default=1)
    run_cmd.add_argument("--nats-port", type=int, default=4222)
    run_cmd.add_argument("--port", type=int, default=8000, help="port of the first gateway")
    run_cmd.add_argument("--history-port", type=int, default=8090, help="history service health/metrics port")
    run_cmd.add_argument("--presence-port", type=int, default=8091, help="presence service health/metrics port")
    run_cmd.add_argument("--namespaces", type=Path, default=Path("config/namespaces.yaml"))
    token_cmd = commands.add_parser("token", help="print a connection token for the running stack")
    token_cmd.add_argument("--user", default="dev")
    token_cmd.add_argument("--ttl", type=float, default=3600)
    opts = parser.parse_args(argv)
    root: Path = opts.root.resolve()
    if opts.command == "run":
        if opts.gateways < 1:
            parser.error("--gateways must be at least 1")
        return run(
            root,
            gateways=opts.gateways,
            nats_port=opts.nats_port,
            first_port=opts.port,
            history_port=opts.history_port,
            presence_port=opts.presence_port,
            namespaces=opts.namespaces,
        )
    secret = os.environ.get("MESHCAST_TOKEN_HMAC_SECRET") or dev_secret(root / ".run")
    print(connection_token(secret, opts.user, ttl=opts.ttl))
    return 0


if __name__ == "__main__":
    sys.exit(main())
