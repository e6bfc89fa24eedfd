"""Composition root of the auth service: keys, NATS revocations, the gRPC API, health and JWKS."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import structlog
from nats.aio.client import Client as Nats

from meshcast.bus import Subjects, close
from meshcast.bus.retry import until_ready
from meshcast.common.apikey import ApiKey, grpc_server
from meshcast.common.health import HealthServer, Response
from meshcast.common.node import NodeInfoResponder, node_name
from meshcast.common.service import connect_nats
from meshcast.proto import auth_pb2_grpc

from .grpc_api import AuthServicer
from .keys import load_keyring
from .revocations import NatsRevocations
from .service import AuthService
from .settings import AuthSettings

log = structlog.get_logger(__name__)

JWKS_PATH = "/.well-known/jwks.json"
# Verifiers cache the JWKS; a rotation publishes the new key before it signs (see README).
JWKS_MAX_AGE = 300
MAX_REQUEST_BYTES = 1 << 20


class AuthApp:
    def __init__(self, settings: AuthSettings, clock: Callable[[], float] = time.time) -> None:
        """Loads the keys: a `ConfigError` names the bad setting."""
        self.settings = settings
        self.subjects = Subjects(settings.subject_prefix)
        self.keyring = load_keyring(settings)
        self._clock = clock
        self._jwks = Response(
            self.keyring.jwks_json,
            "application/json",
            headers=(("Cache-Control", f"public, max-age={JWKS_MAX_AGE}"),),
        )
        self._health = HealthServer(
            settings.health_host, settings.health_port, self.ready, routes={JWKS_PATH: lambda: self._jwks}
        )
        self._nc: Nats | None = None
        self._server: Any = None  # grpc.aio.Server
        self._bucket: asyncio.Task[Any] | None = None
        self.grpc_port = settings.grpc_port

    def ready(self) -> bool:
        """Serving gRPC. Issuing needs no NATS; revocations answer UNAVAILABLE while it is away."""
        return self._server is not None

    def revocations_ready(self) -> bool:
        """The revocation bucket exists (made once JetStream could)."""
        bucket = self._bucket
        return bucket is not None and bucket.done() and not bucket.cancelled() and bucket.exception() is None

    @property
    def health_port(self) -> int:
        return self._health.port

    async def start(self) -> None:
        settings = self.settings
        self._nc = nc = await connect_nats(settings)
        await NodeInfoResponder(nc, self.subjects, node_name("auth", settings.node_name)).start()
        revocations = NatsRevocations(
            nc,
            self.subjects.control,
            ttl=settings.revocation_ttl,
            replicas=settings.revocation_replicas,
            timeout=settings.nats_timeout,
        )
        # Issuing needs no JetStream: serve at once, and make the bucket once JetStream can
        # (a cluster still forming its quorum); a revocation before then answers UNAVAILABLE.
        self._bucket = asyncio.create_task(until_ready(revocations.ensure_bucket, what="revocation bucket"))
        service = AuthService(settings, self.keyring, revocations, self._clock)
        key = ApiKey(settings.api_key.get_secret_value())
        if not key.required:
            log.warning("auth gRPC API without a key: anyone who reaches it may mint tokens (MESHCAST_API_INSECURE)")
        server, port = grpc_server(settings.grpc_host, settings.grpc_port, key, MAX_REQUEST_BYTES)
        auth_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(service), server)
        self.grpc_port = port
        await server.start()
        self._server = server
        await self._health.start()
        log.info(
            "auth started",
            grpc_port=self.grpc_port,
            health_port=self._health.port,
            algorithm=self.keyring.signing.algorithm,
            kid=self.keyring.signing.kid,
            published_keys=len(self.keyring.jwks["keys"]),
            secured=key.required,
        )

    async def stop(self) -> None:
        if self._bucket is not None:
            self._bucket.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._bucket
        server, self._server = self._server, None
        if server is not None:
            # Calls in flight get `grpc_grace` seconds to finish, new ones are refused.
            await server.stop(self.settings.grpc_grace)
        await self._health.stop()
        if self._nc is not None:
            await close(self._nc, self.settings.nats_timeout)
        log.info("auth stopped")
