"""Driving a running nats-server's limits from outside: a config reload.

Lowering ``max_payload`` or ``max_control_line`` on a live server (SIGHUP) is
the real way to make nats-server refuse a client's next protocol line with
``-ERR``; nats-py then closes that connection for good (CLOSED, never
reconnecting), the state a service must not linger in.
"""

from __future__ import annotations

import os
import signal
import time

from meshcast.testing import NatsServer, timeout

_RELOADED = "Reloaded server configuration"


def reload_with(server: NatsServer, *lines: str, seconds: float = 10.0) -> None:
    """Append `lines` to `server`'s config and reload it; return once it has applied."""
    if server.process is None:
        raise RuntimeError("nats-server is not running")
    conf = server.workdir / f"{server.name}.conf"
    conf.write_text(conf.read_text() + "".join(f"{line}\n" for line in lines))
    offset = server.log_path.stat().st_size
    os.kill(server.process.pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout(seconds)
    while _RELOADED not in server.log_path.read_bytes()[offset:].decode(errors="replace"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nats-server did not reload:\n{server.log_path.read_text()[-2000:]}")
        time.sleep(0.02)


def server_log_since(server: NatsServer, offset: int) -> str:
    return server.log_path.read_bytes()[offset:].decode(errors="replace")
