"""Server pings, pong timeouts and connection expiry, for all clients in one task.

One periodic sweep instead of a timer per connection: each client carries
its next ping time, its pong deadline and its token expiry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from meshcast.protocol import PING, Disconnect, DisconnectCode, Format, UnsubscribeCode, ws_frame

from .client import Client
from .context import GatewayContext
from .handlers.connect import refresh_by_proxy

_PING_FRAMES = {fmt: ws_frame(PING[fmt], fmt.binary) for fmt in Format}


def sweep(ctx: GatewayContext, now: float) -> None:
    """Ping the clients that are due; close those that stopped answering or whose
    token expired; unsubscribe (to resubscribe with a new token) expired subscriptions."""
    settings = ctx.settings
    for client in list(ctx.hub.clients.values()):
        if client.closing:
            continue
        if client.pong_deadline is not None and now > client.pong_deadline:
            client.close(Disconnect.of(DisconnectCode.NO_PONG))
            continue
        if client.expires_at is not None and now > client.expires_at + settings.expiry_grace:
            client.close(Disconnect.of(DisconnectCode.EXPIRED))
            continue
        if (
            client.proxied
            and settings.proxy_refresh
            and client.expires_at is not None
            and now >= client.expires_at - settings.proxy_refresh_margin
            and not client.refreshing
        ):
            client.refreshing = True
            _spawn(_refresh(ctx, client))
        if client.sub_expires:
            for channel, at in list(client.sub_expires.items()):
                if now > at + settings.expiry_grace:
                    del client.sub_expires[channel]
                    ctx.hub.kick_later(channel, client, UnsubscribeCode.EXPIRED, "subscription expired")
        if now >= client.next_ping:
            client.write(_PING_FRAMES[client.format])
            client.session.pinged()
            client.next_ping = now + settings.ping_interval
            if client.pong_deadline is None:
                client.pong_deadline = now + settings.pong_timeout


_tasks: set[asyncio.Task[None]] = set()


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    task = asyncio.ensure_future(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def _refresh(ctx: GatewayContext, client: Client) -> None:
    try:
        await refresh_by_proxy(ctx, client)
    finally:
        client.refreshing = False


async def run_heartbeats(ctx: GatewayContext) -> None:
    settings = ctx.settings
    tick = min(1.0, settings.ping_interval / 2, settings.pong_timeout / 2)
    while True:
        await asyncio.sleep(tick)
        sweep(ctx, ctx.clock())
