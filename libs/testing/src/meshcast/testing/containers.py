"""nats-server in a container (testcontainers), used when a Docker engine answers."""

from __future__ import annotations

import functools
import os
from typing import Any

NATS_IMAGE = os.environ.get("MESHCAST_TEST_NATS_IMAGE", "nats:2.11-alpine")


@functools.cache
def docker_available() -> bool:
    """Whether a Docker engine answers (``MESHCAST_TEST_DOCKER=0`` forces no)."""
    if os.environ.get("MESHCAST_TEST_DOCKER") == "0":
        return False
    if not os.environ.get("DOCKER_HOST") and not os.path.exists("/var/run/docker.sock"):
        return False
    try:
        import docker

        client = docker.from_env(timeout=3)
    except Exception:
        return False
    try:
        client.ping()
    except Exception:
        return False
    finally:
        client.close()
    return True


class NatsContainer:
    """A JetStream nats-server container; `url` once started."""

    def __init__(self) -> None:
        from testcontainers.core.container import DockerContainer

        self._container: Any = DockerContainer(NATS_IMAGE).with_command("-js").with_exposed_ports(4222)
        self.url = ""

    def start(self) -> NatsContainer:
        from testcontainers.core.waiting_utils import wait_for_logs

        self._container.start()
        wait_for_logs(self._container, "Server is ready", timeout=30)
        host = self._container.get_container_host_ip()
        self.url = f"nats://{host}:{self._container.get_exposed_port(4222)}"
        return self

    def stop(self) -> None:
        self._container.stop()
