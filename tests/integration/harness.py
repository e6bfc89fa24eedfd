"""Raw protocol clients for integration tests: exact frames in, exact replies out."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import websockets
from websockets.asyncio.client import ClientConnection

from meshcast.auth.app import AuthApp
from meshcast.auth.settings import AuthSettings
from meshcast.gateway.app import Gateway
from meshcast.gateway.settings import GatewaySettings
from meshcast.history.app import HistoryApp
from meshcast.history.settings import HistorySettings
from meshcast.presence.app import PresenceApp
from meshcast.presence.settings import PresenceSettings
from meshcast.proto import auth_pb2_grpc
from meshcast.testing import AUTH_API_KEY, keyed_channel, within
from meshcast.testing.tokens import connection_jwt

SECRET = "integration-secret-0123456789abcdef-0123456789abcdef-0123456789abcdef"
GatewayFactory = Callable[..., Awaitable[Gateway]]
HistoryFactory = Callable[..., Awaitable[HistoryApp]]
PresenceFactory = Callable[..., Awaitable[PresenceApp]]
AuthFactory = Callable[..., Awaitable[AuthApp]]


# Settings of services run in the test's process: loopback, ports chosen by the
# OS (0), the test secret; `overrides` win.


def gateway_settings(nats_url: str, namespaces_file: Path, **overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        "nats_url": nats_url,
        "gateway_host": "127.0.0.1",
        "gateway_port": 0,
        "token_hmac_secret": SECRET,
        "namespaces_file": namespaces_file,
        "drain_seconds": 0.2,
        # No events service (and so no MESHCAST_EVENTS stream) in this tier: a gateway would
        # retry into the missing stream for its whole life. tests/e2e/test_events.py runs them.
        "events_enabled": False,
        **overrides,
    }
    return GatewaySettings(**values)


def history_settings(nats_url: str, namespaces_file: Path, **overrides: Any) -> HistorySettings:
    values: dict[str, Any] = {
        "nats_url": nats_url,
        "namespaces_file": namespaces_file,
        "health_host": "127.0.0.1",
        "health_port": 0,
        **overrides,
    }
    return HistorySettings(**values)


def presence_settings(nats_url: str, **overrides: Any) -> PresenceSettings:
    values: dict[str, Any] = {"nats_url": nats_url, "health_host": "127.0.0.1", "health_port": 0, **overrides}
    return PresenceSettings(**values)


def auth_settings(nats_url: str, **overrides: Any) -> AuthSettings:
    values: dict[str, Any] = {
        "nats_url": nats_url,
        "grpc_host": "127.0.0.1",
        "grpc_port": 0,
        "grpc_grace": 0.2,
        "health_host": "127.0.0.1",
        "health_port": 0,
        "api_key": AUTH_API_KEY,
        **overrides,
    }
    return AuthSettings(**values)


class Service(Protocol):
    async def stop(self) -> None: ...


def stopped(service: Service) -> bool:
    """Whether `service` was stopped already (by the test): its NATS connection is
    closed. Every service's stop() ends so, and nothing else does (they reconnect
    without end); one whose connection is not known to be closed is not stopped."""
    nc = getattr(service, "_nc", None)
    return nc is not None and bool(nc.is_closed)


async def stop_all(services: Iterable[Service]) -> None:
    """Stop each of `services` that the test did not stop itself."""
    for service in services:
        if not stopped(service):
            await service.stop()


def url(gateway: Gateway) -> str:
    return f"ws://127.0.0.1:{gateway.port}/connection/websocket"


def token(user: str = "alice", ttl: float = 3600, **info: Any) -> str:
    """A connection token of the test secret; keyword arguments become its `info`."""
    claims: dict[str, Any] = {"info": info} if info else {}
    return connection_jwt(SECRET, user, ttl=ttl, **claims)


class JsonClient:
    """A raw protocol client: exact frames in, exact replies out."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._next_id = 0
        self.pushes: list[dict[str, Any]] = []

    async def send(self, *commands: dict[str, Any]) -> None:
        await self.ws.send("\n".join(json.dumps(c) for c in commands))

    async def command(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        self._next_id += 1
        cmd_id = self._next_id
        await self.send({"id": cmd_id, method: body})
        while True:
            for reply in await self.recv():
                if reply.get("id") == cmd_id:
                    return reply
                self.pushes.append(reply)

    async def recv(self, seconds: float = 5.0) -> list[dict[str, Any]]:
        raw = await within(self.ws.recv(), seconds)
        text = raw.decode() if isinstance(raw, bytes) else raw
        return [json.loads(line) for line in text.split("\n") if line]

    async def next_push(self, seconds: float = 5.0) -> dict[str, Any]:
        while not self.pushes:
            self.pushes.extend(r for r in await self.recv(seconds) if r)
        return self.pushes.pop(0)

    async def close_code(self, seconds: float = 5.0) -> int | None:
        await within(self.ws.wait_closed(), seconds)
        return self.ws.close_code


# Every socket a test opens, closed by the autouse fixture after the test.
OPEN_SOCKETS: list[ClientConnection] = []


async def open_ws(gateway: Gateway, **kwargs: Any) -> ClientConnection:
    ws = await websockets.connect(url(gateway), open_timeout=5, **kwargs)
    OPEN_SOCKETS.append(ws)
    return ws


async def close_all() -> None:
    while OPEN_SOCKETS:
        await OPEN_SOCKETS.pop().close()


async def open_client(gateway: Gateway, **kwargs: Any) -> JsonClient:
    return JsonClient(await open_ws(gateway, **kwargs))


async def connected_client(gateway: Gateway, user: str = "alice") -> JsonClient:
    client = await open_client(gateway)
    reply = await client.command("connect", {"token": token(user)})
    assert "connect" in reply, reply
    return client


class AuthService:
    """A started auth service (in this process) and a gRPC stub connected to it."""

    def __init__(self, app: AuthApp) -> None:
        self.app = app
        self.channel: Any = keyed_channel(f"127.0.0.1:{app.grpc_port}")
        self.stub: Any = auth_pb2_grpc.AuthServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()
        await self.app.stop()
