"""Composition root of the server API: NATS, the method table, HTTP, gRPC and health."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from nats.aio.client import Client as Nats

from meshcast.bus import Subjects, close
from meshcast.common.apikey import ApiKey, grpc_server
from meshcast.common.health import HealthServer
from meshcast.common.namespaces import load_channels_config
from meshcast.common.node import NodeInfoResponder, node_name
from meshcast.common.service import connect_nats
from meshcast.proto import centrifugo_api_pb2_grpc

from .admin import AdminHttp
from .admin_sessions import AdminSessions, LoginLimiter
from .bus import Bus
from .grpc_api import ApiServicer
from .http_api import HttpApi
from .http_server import HttpLimits, HttpServer
from .methods import Batch, Method, table
from .service import ApiService
from .settings import ApiSettings

log = structlog.get_logger(__name__)


class ApiApp:
    def __init__(self, settings: ApiSettings) -> None:
        """Loads the namespaces: a `ConfigError` names the bad setting."""
        self.settings = settings
        self.channels = load_channels_config(settings.namespaces_file)
        self.subjects = Subjects(settings.subject_prefix, self.channels.namespace_separator)
        self._health = HealthServer(settings.health_host, settings.health_port, self.ready)
        self._nc: Nats | None = None
        self._http: HttpServer | None = None
        self._service: ApiService | None = None
        self._grpc: Any = None  # grpc.aio.Server
        self.http_port = settings.http_port
        self.grpc_port = settings.grpc_port

    def ready(self) -> bool:
        return self._nc is not None and self._nc.is_connected and self._http is not None

    async def start(self) -> None:
        settings = self.settings
        key = ApiKey(settings.api_key.get_secret_value())
        if not key.required:
            log.warning("api running without a key: anyone who reaches it may use it (MESHCAST_API_INSECURE)")
        self._nc = nc = await connect_nats(settings)
        await NodeInfoResponder(nc, self.subjects, node_name("api", settings.node_name)).start()
        bus = Bus(nc, self.subjects, settings.nats_timeout, settings.scatter_wait, settings.gateway_timeout)
        await bus.watch_gateways()
        service = ApiService(
            bus,
            self.channels,
            publish_deadline=settings.publish_deadline,
            epoch_ttl=settings.epoch_ttl,
            publish_linger=settings.publish_linger,
        )
        self._service = service
        methods = table(service)
        batch = Batch(methods, settings.api_max_batch)
        await self._start_http(HttpApi(methods, batch, key, self._admin(methods)))
        self._start_grpc(ApiServicer(methods, batch), key)
        await self._grpc.start()
        await self._health.start()
        log.info(
            "api started",
            http_port=self.http_port,
            grpc_port=self.grpc_port,
            health_port=self._health.port,
            secured=key.required,
            admin=bool(settings.admin_secret.get_secret_value()),
        )

    async def _start_http(self, http: HttpApi) -> None:
        settings = self.settings
        limits = HttpLimits(
            max_body=settings.api_max_body_bytes,
            max_head=settings.http_max_head_bytes,
            max_pipelined=settings.http_max_pipelined,
            max_connections=settings.http_max_connections,
            request_timeout=settings.http_request_timeout,
            idle_timeout=settings.http_idle_timeout,
        )
        server = HttpServer(http, limits)
        self.http_port = await server.start(settings.http_host, settings.http_port)
        self._http = server

    def _admin(self, methods: dict[str, Method]) -> AdminHttp | None:
        """The admin UI, when `admin_secret` is set."""
        settings = self.settings
        secret = settings.admin_secret.get_secret_value()
        if not secret:
            return None
        sessions = AdminSessions(
            secret,
            ttl=settings.admin_session_ttl,
            max_sessions=settings.admin_max_sessions,
            limiter=LoginLimiter(settings.admin_login_failures, settings.admin_login_window),
        )
        return AdminHttp(sessions, methods, cookie_secure=settings.admin_cookie_secure)

    def _start_grpc(self, servicer: ApiServicer, key: ApiKey) -> None:
        settings = self.settings
        server, self.grpc_port = grpc_server(settings.grpc_host, settings.grpc_port, key, settings.api_max_body_bytes)
        centrifugo_api_pb2_grpc.add_CentrifugoApiServicer_to_server(servicer, server)
        self._grpc = server

    @property
    def health_port(self) -> int:
        return self._health.port

    async def stop(self) -> None:
        """Both ways in stop listening at once; requests being answered get `grpc_grace` to finish."""
        grace = self.settings.grpc_grace
        server, self._grpc = self._grpc, None
        http, self._http = self._http, None
        await asyncio.gather(
            *([server.stop(grace)] if server is not None else []),
            *([http.stop(grace)] if http is not None else []),
        )
        if self._service is not None:
            await self._service.close()
        await self._health.stop()
        if self._nc is not None:
            await close(self._nc, self.settings.nats_timeout)
        log.info("api stopped")
