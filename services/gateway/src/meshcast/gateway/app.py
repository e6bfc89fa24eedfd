"""Composition root of the gateway: wires NATS, the hub, handlers and the server."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

import structlog
from nats.aio.client import Client as Nats
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.typing import Subprotocol

from meshcast.bus import Subjects, close
from meshcast.common.namespaces import load_channels_config
from meshcast.common.service import connect_nats
from meshcast.protocol import PROTOBUF_SUBPROTOCOL, Disconnect, DisconnectCode, ReplyError, UnsubscribeCode

from . import metrics
from .auth import build_verifier
from .client import Client
from .connection import ConnectionHandler, connection_class
from .context import GatewayContext
from .control import handle_control
from .drain import drain_clients
from .events import EventOutbox, EventPublisher
from .forwarded import TrustedProxies
from .heartbeat import run_heartbeats
from .history import HistoryClient
from .http import make_request_processor
from .hub import GapFiller, Hub
from .node import NodeResponder
from .presence import PresenceReporter
from .proxy import ProxyClient
from .revocations import RevocationWatch
from .sequencer import Item
from .settings import GatewaySettings

log = structlog.get_logger(__name__)


def _select_subprotocol(connection: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """protobuf when the client offers it, JSON (no subprotocol) otherwise."""
    return Subprotocol(PROTOBUF_SUBPROTOCOL) if PROTOBUF_SUBPROTOCOL in offered else None


class Gateway:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.channels = load_channels_config(settings.namespaces_file)
        self.subjects = Subjects(settings.subject_prefix, self.channels.namespace_separator)
        self.verifier = build_verifier(settings)
        self._nc: Nats | None = None
        self._ctx: GatewayContext | None = None
        self._server: Server | None = None
        self._handler: ConnectionHandler | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._presence: PresenceReporter | None = None
        self._events: EventPublisher | None = None
        self._revocations: RevocationWatch | None = None
        self._node: NodeResponder | None = None
        self.draining = False
        metrics.DRAINING.set_function(lambda: float(self.draining))
        self.port = settings.gateway_port

    def _gap_filler(self, history: HistoryClient) -> GapFiller:
        async def fill(channel: str, epoch: str, after: int) -> tuple[list[Item], int] | None:
            options = self.channels.options_for(channel)
            limit = options.recovery_max_publications if options else 0
            try:
                rec = await history.recover(channel, epoch, after, max(limit, 1))
            except ReplyError as err:
                log.warning("gap fill failed", channel=channel, code=err.code)
                return None
            if not rec.recovered:
                return None
            return [Item(p.offset, 0, p.publication, p.first) for p in rec.publications], rec.channel_offset

        return fill

    def _on_leave(self, channel: str, client: Client, code: UnsubscribeCode, reason: str) -> None:
        if self._presence is not None:
            self._presence.left(channel, client.id)
        if self._ctx is not None and self._ctx.events is not None:
            self._ctx.events.unsubscribed(client.id, channel, code, reason)

    def _on_expired(self, epoch: int) -> None:
        """Presence declared this gateway dead (see `presence`): every connection's end was
        announced for it, so none may live on, and none of their events may go out."""
        if self._ctx is None:
            return
        dropped = self._ctx.events.expired() if self._ctx.events is not None else 0
        clients = list(self._ctx.hub.clients.values())
        log.warning("declared dead: closing every connection", epoch=epoch, clients=len(clients), events=dropped)
        gone = Disconnect.of(DisconnectCode.INSUFFICIENT_STATE)
        for client in clients:
            client.close(gone)

    def ready(self) -> bool:
        return self._nc is not None and self._nc.is_connected and not self.draining

    async def start(self) -> None:
        settings = self.settings
        self._nc = nc = await connect_nats(
            settings,
            error_cb=self._on_nats_error,
            disconnected_cb=self._on_nats_disconnected,
            reconnected_cb=self._on_nats_reconnected,
        )
        history = HistoryClient(nc, self.subjects, settings.history_timeout)
        self._presence = presence = PresenceReporter(
            nc,
            self.subjects,
            settings.presence_heartbeat_interval,
            settings.max_reply_bytes,
            on_expired=self._on_expired,
        )
        await presence.start()
        outbox = None
        if settings.events_enabled:
            outbox = EventOutbox(
                presence.local.id,
                self.subjects,
                limit=settings.events_queue_size,
                epoch=lambda: presence.local.epoch,
            )
            self._events = EventPublisher(
                nc,
                outbox,
                standing=presence.standing,
                batch=settings.events_batch,
                ack_timeout=settings.events_ack_timeout,
            )
            await self._events.start()
        self._revocations = RevocationWatch(nc, settings.revocations_retry_interval, settings.revocation_ttl)
        self._revocations.start()
        ctx = GatewayContext(
            settings=settings,
            channels=self.channels,
            subjects=self.subjects,
            nc=nc,
            js=nc.jetstream(timeout=settings.nats_timeout),
            history=history,
            hub=Hub(nc, self.subjects, fill_gap=self._gap_filler(history), on_leave=self._on_leave),
            presence=presence,
            revocations=self._revocations.revocations,
            proxy=ProxyClient(nc, self.subjects, settings.proxy_timeout),
            verifier=self.verifier,
            clock=time.time,
            events=outbox,
        )
        self._ctx = ctx

        async def on_control(msg: object) -> None:
            await handle_control(ctx, msg)  # type: ignore[arg-type]

        await nc.subscribe(self.subjects.control, cb=on_control)
        self._node = NodeResponder(ctx, presence.local.id)
        await self._node.start()
        self._handler = handler = ConnectionHandler(ctx)
        self._server = await serve(
            handler,
            settings.gateway_host,
            settings.gateway_port,
            select_subprotocol=_select_subprotocol,
            process_request=make_request_processor(
                settings,
                ready=self.ready,
                at_capacity=lambda: handler.open_sockets >= settings.max_connections,
            ),
            compression="deflate" if settings.websocket_compression else None,
            max_size=settings.max_message_size,
            ping_interval=None,
            open_timeout=settings.handshake_timeout,
            close_timeout=settings.close_timeout,
            backlog=settings.listen_backlog,
            create_connection=connection_class(
                settings.max_handshakes_per_ip, TrustedProxies.of(settings.trusted_proxies)
            ),
        )
        sockets = self._server.sockets
        if sockets:
            self.port = sockets[0].getsockname()[1]
        self._tasks.append(asyncio.create_task(run_heartbeats(ctx)))
        log.info("gateway started", host=settings.gateway_host, port=self.port, path=settings.websocket_path)

    async def drain(self) -> None:
        """Stop accepting, then disconnect clients (reconnect code) over the drain window."""
        if self._server is None or self._handler is None or self._ctx is None:
            return
        self.draining = True
        self._server.server.close()
        clients = list(self._ctx.hub.clients.values())
        log.info("draining", clients=len(clients), seconds=self.settings.drain_seconds)
        # Spread the reconnects over the window so other gateways are not stampeded.
        await drain_clients(
            clients,
            Disconnect.of(DisconnectCode.SHUTDOWN),
            window=self.settings.drain_seconds,
            tick=self.settings.drain_tick,
        )
        await self._handler.wait_closed()

    async def stop(self) -> None:
        await self.drain()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), self.settings.close_timeout * 2)
        if self._node is not None:
            await self._node.stop()
        if self._events is not None:
            # After the connections: their disconnects are stored before NATS closes.
            await self._events.stop(self.settings.events_stop_timeout)
        if self._presence is not None:
            # After the connections: their leaves are sent before NATS closes.
            await self._presence.stop()
        if self._revocations is not None:
            await self._revocations.stop()
        if self._nc is not None:
            await close(self._nc, self.settings.nats_timeout)
        log.info("gateway stopped")

    async def _on_nats_error(self, exc: Exception) -> None:
        log.warning("nats error", error=str(exc))

    async def _on_nats_disconnected(self) -> None:
        log.warning("nats disconnected")
        # Called before the reconnect: nothing from the new connection is trusted blindly.
        if self._ctx is not None:
            self._ctx.hub.suspect()

    async def _on_nats_reconnected(self) -> None:
        url = self._nc.connected_url if self._nc is not None else None
        # host:port only: the URL may carry this service's NATS credentials.
        log.info("nats reconnected", server=f"{url.hostname}:{url.port}" if url else "")
        if self._ctx is not None:
            self._ctx.hub.resync()
