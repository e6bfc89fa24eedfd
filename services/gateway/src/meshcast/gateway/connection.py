"""The I/O shell of one WebSocket connection around the Sans-I/O session.

It reads messages, feeds them to `ServerSession`, runs the command handlers
and writes their replies through `Client.write`. The connection's only task
is this reader; fan-out writes happen in the hub, replies here.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import structlog
from google.protobuf.message import Message
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from opentelemetry.util.types import AttributeValue
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State as WsState

from meshcast.common.telemetry import DESTINATION, tracer, tracing_enabled
from meshcast.protocol import (
    PROTOBUF_SUBPROTOCOL,
    CloseRequired,
    CommandReceived,
    Disconnect,
    DisconnectCode,
    DisconnectError,
    ErrorCode,
    Format,
    ReplyError,
    ServerSession,
    State,
    ws_frame,
)

from . import metrics
from .client import Client
from .context import GatewayContext
from .forwarded import TrustedProxies
from .handlers import HANDLERS, AfterReply
from .handlers.result import EncodedResult
from .http import client_address
from .ratelimit import TokenBucket

Then = Callable[[], None]

log = structlog.get_logger(__name__)
# Commands that are not a client operation worth a trace of their own.
_UNTRACED = frozenset({"ping"})


class HandshakeLimit:
    """WebSocket upgrades in progress, per client IP, at most `limit` at a time.

    A slowloris opens TCP connections and never finishes the upgrade, each
    held for the handshake timeout; per-IP connect rates do not see them,
    since they are counted only once the HTTP request has arrived."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._open: dict[str, int] = {}

    def admit(self, ip: str) -> bool:
        count = self._open.get(ip, 0)
        if count >= self._limit:
            return False
        self._open[ip] = count + 1
        return True

    def done(self, ip: str) -> None:
        count = self._open.pop(ip, 0) - 1
        if count > 0:
            self._open[ip] = count


class GatewayConnection(ServerConnection):
    """websockets' connection, telling its client what it received the moment it does,
    and counting its upgrade against its IP's `HandshakeLimit` until it completes.

    - Any data from the peer proves it alive: the pong deadline is cleared here,
      not when the connection task next reads a message (it may be awaiting a
      slow command, a subscribe riding through an election, for longer than the
      pong timeout).
    - The hub writes frames straight to the transport; once a close frame was
      received (and answered) no data frame may follow, so the client stops
      writing then rather than when its connection task gets to run.
    Both are checked per received chunk, never per fan-out write."""

    # Set on the per-gateway subclass (see `connection_class`).
    handshakes: HandshakeLimit | None = None
    proxies: TrustedProxies = TrustedProxies(())
    client: Client | None = None
    _upgrading: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        limit = self.handshakes
        if limit is None:
            return
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if peer else ""
        if self.proxies.trusts(ip):
            return  # a trusted proxy's upgrades are its clients', each limited by its own address
        if not limit.admit(ip):
            metrics.HANDSHAKES_DROPPED.inc()
            log.debug("too many handshakes in progress", ip=ip)
            self.transport.abort()
            return
        self._upgrading = ip

    def upgraded(self) -> None:
        """The handshake is over: it no longer counts against its IP."""
        ip, self._upgrading = self._upgrading, None
        if ip is not None and self.handshakes is not None:
            self.handshakes.done(ip)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        client = self.client
        if client is not None:
            client.pong_deadline = None
            if self.protocol.state is not WsState.OPEN:
                self._closing_now()

    def connection_lost(self, exc: Exception | None) -> None:
        self.upgraded()
        self._closing_now()
        super().connection_lost(exc)

    def _closing_now(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            client.halt()


def connection_class(max_handshakes_per_ip: int, proxies: TrustedProxies) -> type[GatewayConnection]:
    """A connection class of one gateway, sharing one `HandshakeLimit`."""

    class Connection(GatewayConnection):
        handshakes = HandshakeLimit(max_handshakes_per_ip)

    Connection.proxies = proxies

    return Connection


class ConnectionHandler:
    """Serves every WebSocket connection of one gateway (`websockets` handler)."""

    def __init__(self, ctx: GatewayContext) -> None:
        self._ctx = ctx
        self._closing: set[asyncio.Task[None]] = set()
        self._proxies = TrustedProxies.of(ctx.settings.trusted_proxies)
        self.open_sockets = 0

    async def __call__(self, ws: ServerConnection) -> None:
        settings = self._ctx.settings
        fmt = Format.PROTOBUF if ws.subprotocol == PROTOBUF_SUBPROTOCOL else Format.JSON
        session = ServerSession(fmt, max_commands_per_frame=settings.max_commands_per_frame)

        def on_close(client: Client, disconnect: Disconnect) -> None:
            self._close_later(ws, client, disconnect)

        client = Client(
            str(uuid.uuid4()),
            session,
            ws.transport,
            buffer_limit=settings.write_buffer_limit,
            on_close=on_close,
        )
        if isinstance(ws, GatewayConnection):
            ws.upgraded()
            ws.client = client
        request = ws.request
        if request is not None:
            client.remote_addr = client_address(self._proxies, ws, request)
        if settings.proxy_connect:
            wanted = {h.lower() for h in settings.proxy_headers}
            if request is not None:
                client.handshake = {k: v for k, v in request.headers.raw_items() if k.lower() in wanted}
            client.handshake = {**(client.handshake or {}), "_remote_addr": client.remote_addr}
        self.open_sockets += 1
        try:
            await self._serve(ws, client)
            if client.disconnect is not None:
                # Close with the protocol's code before websockets' default 1000.
                await ws.close(client.disconnect.code, client.disconnect.reason)
        except ConnectionClosed:
            pass
        finally:
            self.open_sockets -= 1
            client.closing = True
            session.closed()
            await self._ctx.hub.remove_client(client)
            events = self._ctx.events
            if events is not None:
                # The server's close code, else the peer's (1006: the connection was lost).
                ended = client.disconnect or Disconnect(ws.close_code or 1006, ws.close_reason or "")
                events.disconnected(client.id, ended.code, ended.reason)

    async def _serve(self, ws: ServerConnection, client: Client) -> None:
        session = client.session
        settings = self._ctx.settings
        loop = asyncio.get_running_loop()
        connect_deadline = loop.time() + settings.handshake_timeout
        rate = TokenBucket(settings.command_rate, settings.command_burst, loop.time())
        # Refusals are forgiven at this rate, not by the next admitted command: a
        # client flooding at twice the rate is half admitted, and still disconnected.
        forgiven = settings.command_refusals_before_disconnect / settings.command_refusal_window
        refusals = TokenBucket(forgiven, settings.command_refusals_before_disconnect, loop.time())
        while not client.closing:
            if session.state is State.CONNECTING:
                try:
                    async with asyncio.timeout_at(connect_deadline):
                        message = await ws.recv()
                except TimeoutError:
                    client.close(Disconnect.of(DisconnectCode.STALE))
                    return
            else:
                message = await ws.recv()
            for event in session.receive(message):
                if isinstance(event, CloseRequired):
                    log.info("bad frame", client=client.id, code=event.disconnect.code)
                    client.close(event.disconnect)
                elif isinstance(event, CommandReceived):
                    if not rate.take(loop.time()):
                        if not refusals.take(loop.time()):
                            log.info("command flood", client=client.id, user=client.user)
                            client.close(Disconnect.of(DisconnectCode.TOO_MANY_REQUESTS))
                            return
                        if event.id:
                            error = ReplyError.of(ErrorCode.TOO_MANY_REQUESTS)
                            client.write(ws_frame(session.reply_error(event.id, error), client.format.binary))
                        continue
                    reply, then = await self._dispatch(client, event)
                    if reply is not None:
                        client.write(ws_frame(reply, client.format.binary))
                    if then is not None and not client.closing:
                        then()
                    if event.method == "connect" and session.state is State.CONNECTING and not client.closing:
                        await self._drop_after_connect_error(ws, client)
                        return
                if client.closing:
                    return

    async def _drop_after_connect_error(self, ws: ServerConnection, client: Client) -> None:
        """A connect answered with an error ends the connection, as in Centrifugo: nothing
        more is read (one socket cannot try token after token), the client has
        `close_timeout` to close it (SDKs do at once, then connect anew), and then the
        connection is dropped without a close frame (1006)."""
        client.session.closed()
        client.closing = True
        try:
            async with asyncio.timeout(self._ctx.settings.close_timeout):
                await ws.wait_closed()
        except TimeoutError:
            log.info("connection dropped after a connect error", client=client.id)
            ws.transport.abort()

    async def _dispatch(self, client: Client, event: CommandReceived) -> tuple[bytes | None, Then | None]:
        """The encoded reply of one command, and what must follow it on the wire; with
        tracing on, inside the command's span (the root of the client operation's trace)."""
        if not tracing_enabled() or event.method in _UNTRACED:
            return await self._execute(client, event)
        attributes: dict[str, AttributeValue] = {"meshcast.client": client.id}
        channel = getattr(event.request, "channel", "")
        if channel:
            attributes[DESTINATION] = channel
        name = f"meshcast.command.{event.method or 'unknown'}"
        with tracer.start_as_current_span(name, kind=SpanKind.SERVER, attributes=attributes):
            return await self._execute(client, event)

    async def _execute(self, client: Client, event: CommandReceived) -> tuple[bytes | None, Then | None]:
        session = client.session
        handler = HANDLERS.get(event.method)
        metrics.COMMANDS.labels(event.method or "unknown").inc()
        if handler is None:
            return session.reply_error(event.id, ReplyError.of(ErrorCode.METHOD_NOT_FOUND)), None
        try:
            result = await handler(self._ctx, client, event.request)
        except ReplyError as err:
            metrics.ERRORS.labels(str(err.code)).inc()
            trace.get_current_span().set_attribute("meshcast.error_code", int(err.code))
            log.info("command failed", method=event.method, client=client.id, code=err.code)
            return session.reply_error(event.id, err), None
        except DisconnectError as err:
            log.info("command disconnects", method=event.method, client=client.id, code=err.disconnect.code)
            client.close(err.disconnect)
            return None, None
        except Exception:
            log.exception("command crashed", method=event.method, client=client.id)
            metrics.ERRORS.labels(str(int(ErrorCode.INTERNAL))).inc()
            return session.reply_error(event.id, ReplyError.of(ErrorCode.INTERNAL)), None
        then: Then | None = None
        if isinstance(result, AfterReply):
            message: Message | EncodedResult | None = result.result
            then = result.then
        else:
            message = result
        if message is None or event.id == 0:
            return None, then
        if isinstance(message, EncodedResult):
            return session.reply_encoded(event.id, event.method, message.proto, message.json), then
        return session.reply_result(event.id, event.method, message), then

    def _close_later(self, ws: ServerConnection, client: Client, disconnect: Disconnect) -> None:
        metrics.DISCONNECTS.labels(str(disconnect.code)).inc()
        log.info("disconnect", client=client.id, user=client.user, code=disconnect.code, reason=disconnect.reason)
        task = asyncio.create_task(ws.close(disconnect.code, disconnect.reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def wait_closed(self) -> None:
        """Wait for the close handshakes already started."""
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=self._ctx.settings.close_timeout)
