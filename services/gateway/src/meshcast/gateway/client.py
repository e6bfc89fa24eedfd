"""One connected client as the hub sees it: identity, subscriptions, one writer.

Every byte a client receives goes through `Client.write`, which also notices
a client that reads too slowly (its socket's write buffer over the limit)
and closes it with the protocol's ``slow`` code.

`Client.write` never raises. Fan-out loops call it for many clients in a
row; a socket that is closing (the peer's close frame already answered, the
transport half-closed or gone) must cost only its own client, never the
clients after it in the loop. Such a client is skipped from then on, counted,
and its transport aborted so that its connection task cleans it up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from meshcast.protocol import Disconnect, DisconnectCode, Format, ServerSession

from . import metrics

CloseCallback = Callable[["Client", Disconnect], None]

log = structlog.get_logger(__name__)


class Client:
    __slots__ = (
        "_buffer_limit",
        "_on_close",
        "chan_info",
        "channels",
        "closing",
        "disconnect",
        "expires_at",
        "format",
        "handshake",
        "id",
        "info",
        "jti",
        "next_ping",
        "pong_deadline",
        "proxied",
        "refreshing",
        "remote_addr",
        "session",
        "sub_expires",
        "sub_jti",
        "transport",
        "user",
    )

    def __init__(
        self,
        client_id: str,
        session: ServerSession,
        transport: asyncio.WriteTransport,
        *,
        buffer_limit: int,
        on_close: CloseCallback,
    ) -> None:
        self.id = client_id
        self.session = session
        self.format: Format = session.format
        self.transport = transport
        self.user = ""
        self.info = b""
        self.jti = ""
        # Handshake headers for the connect proxy (dropped after connect), and
        # whether a backend (not a token) vouched for this connection.
        self.handshake: dict[str, str] | None = None
        self.remote_addr = ""
        self.proxied = False
        self.refreshing = False
        self.channels: set[str] = set()
        # Per channel, only for subscriptions made with a token: its info and expiry.
        self.chan_info: dict[str, bytes] | None = None
        self.sub_expires: dict[str, float] | None = None
        # Per channel, the jti of the subscription token it was made (or refreshed) with.
        self.sub_jti: dict[str, str] | None = None
        self.expires_at: float | None = None
        self.next_ping = 0.0
        self.pong_deadline: float | None = None
        self.closing = False
        self.disconnect: Disconnect | None = None
        self._buffer_limit = buffer_limit
        self._on_close = on_close

    def set_subscription(self, channel: str, info: bytes, expires_at: float | None, jti: str = "") -> None:
        if jti:
            if self.sub_jti is None:
                self.sub_jti = {}
            self.sub_jti[channel] = jti
        if info:
            if self.chan_info is None:
                self.chan_info = {}
            self.chan_info[channel] = info
        if expires_at is not None:
            if self.sub_expires is None:
                self.sub_expires = {}
            self.sub_expires[channel] = expires_at

    def channels_of_token(self, jti: str) -> list[str]:
        """The channels this client subscribed to with the subscription token `jti`."""
        return [c for c, j in self.sub_jti.items() if j == jti] if self.sub_jti else []

    def channel_info(self, channel: str) -> bytes:
        return self.chan_info.get(channel, b"") if self.chan_info else b""

    def forget(self, channel: str) -> None:
        """Drop everything this client knew about one of its channels."""
        self.channels.discard(channel)
        if self.chan_info:
            self.chan_info.pop(channel, None)
        if self.sub_expires:
            self.sub_expires.pop(channel, None)
        if self.sub_jti:
            self.sub_jti.pop(channel, None)

    def write(self, frame: bytes) -> None:
        """Queue one WebSocket frame; close the client when it cannot keep up.

        Never raises (see the module docstring)."""
        if self.closing:
            return
        transport = self.transport
        if transport.is_closing():
            self._lost("closing")
            return
        try:
            transport.write(frame)
            backlog = transport.get_write_buffer_size()
        except Exception as exc:  # any transport failure is this client's alone
            self._lost(type(exc).__name__)
            return
        if backlog > self._buffer_limit:
            self.close(Disconnect.of(DisconnectCode.SLOW))

    def halt(self) -> None:
        """The close handshake began on the peer's side: no data frame may follow it."""
        self.closing = True

    def _lost(self, why: str) -> None:
        """The socket went away under a write: stop writing, let the connection task clean up."""
        self.closing = True
        metrics.WRITES_SKIPPED.labels(why).inc()
        log.debug("write skipped", client=self.id, reason=why)
        try:
            self.transport.abort()
        except Exception as exc:  # already closed is fine
            log.debug("abort failed", client=self.id, reason=type(exc).__name__)

    def close(self, disconnect: Disconnect) -> None:
        """End the connection with `disconnect` (once; later calls do nothing)."""
        if self.closing:
            return
        self.closing = True
        self.disconnect = disconnect
        self.session.closed()
        self._on_close(self, disconnect)
