"""Instructions per server API publish request, counted by valgrind, not timed.

On the shared 2-core machine the CPU time a request costs moves with whatever
else runs (other processes' caches, the scheduler): the same code measured
160-320 us a request in one afternoon. An instruction count does not move:
this runs one ``python -m meshcast.api`` under ``valgrind --tool=callgrind``
against a private nats-server, zeroes the counters once it is warm, sends
`--requests` publish requests (a channel without history, as the ``api``
scenario) over `--connections` keep-alive connections, and prints the
instructions the API process executed per request. Only user space is counted:
the kernel's part (the socket reads and writes) is not, so this compares
versions of the API's own code, not whole costs.

    .venv/bin/python bench/apicost.py [--requests 2000] [--connections 8]

Under valgrind the API runs some 50 times slower: about two minutes in all.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.http11 import HttpConn, request_head
from bench.stack import NAMESPACES_YAML, free_ports, start_nats
from meshcast.testing.nats import nats_server_binary

BODY = b'{"channel":"bench:0","data":{"bench_ts":1}}'
KEY = "apicost-key"


async def _wait_ready(port: int, limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.5)
            continue
        writer.close()
        return
    raise SystemExit(f"the API did not listen on {port} within {limit:.0f}s")


async def _publish(port: int, requests: int, connections: int, limit: float) -> float:
    """Send `requests` publishes over `connections` keep-alive connections; the seconds it took."""
    loop = asyncio.get_running_loop()
    head = request_head("127.0.0.1", port, "/api/publish", {"X-API-Key": KEY, "Content-Type": "application/json"})
    conns = [(await loop.create_connection(HttpConn, "127.0.0.1", port))[1] for _ in range(connections)]
    left = requests
    started = time.monotonic()

    async def run(conn: HttpConn) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            status, body = await asyncio.wait_for(conn.post(head, BODY), limit)
            if status != 200 or body != b'{"result":{}}':
                raise SystemExit(f"unexpected answer {status} {body!r}")

    await asyncio.gather(*(run(c) for c in conns))
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    return time.monotonic() - started


def _callgrind(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        print("valgrind is not installed (Debian's valgrind package)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="apicost-"))
    nats = start_nats(nats_server_binary(), workdir, 30)
    namespaces = workdir / "namespaces.yaml"
    namespaces.write_text(NAMESPACES_YAML)
    http_port, grpc_port, health_port = free_ports(3)
    out = workdir / "callgrind.out"
    env = {
        **os.environ,
        "MESHCAST_NATS_URL": nats.nats_url,
        "MESHCAST_NAMESPACES_FILE": str(namespaces),
        "MESHCAST_API_KEY": KEY,
        "MESHCAST_HTTP_HOST": "127.0.0.1",
        "MESHCAST_HTTP_PORT": str(http_port),
        "MESHCAST_GRPC_HOST": "127.0.0.1",
        "MESHCAST_GRPC_PORT": str(grpc_port),
        "MESHCAST_HEALTH_HOST": "127.0.0.1",
        "MESHCAST_HEALTH_PORT": str(health_port),
    }
    argv = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        "--dump-instr=no",
        "--collect-jumps=no",
        sys.executable,
        "-m",
        "meshcast.api",
    ]
    with (workdir / "api.log").open("wb") as log:
        api = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        asyncio.run(_wait_ready(http_port, 600))
        asyncio.run(_publish(http_port, args.warmup, args.connections, 120))
        _callgrind(api.pid, "--zero")
        seconds = asyncio.run(_publish(http_port, args.requests, args.connections, 120))
        _callgrind(api.pid, "--dump=measured")
    finally:
        api.terminate()
        api.wait(120)
        nats.proc.stop()
    dumps = sorted(workdir.glob("callgrind.out*"), key=lambda p: p.stat().st_mtime)
    measured = [p for p in dumps if "measured" in p.read_text(errors="replace")[:4000]]
    if not measured:
        print(f"no measured dump in {workdir}", file=sys.stderr)
        return 1
    totals = [line for line in measured[0].read_text(errors="replace").splitlines() if line.startswith("summary:")]
    instructions = int(totals[0].split()[1])
    print(
        f"server API publish: {instructions / args.requests:,.0f} instructions per request "
        f"({args.requests} requests over {args.connections} keep-alive connections, user space only, "
        f"{seconds:.1f}s under valgrind)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
