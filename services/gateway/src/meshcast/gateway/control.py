"""Commands to every gateway on the control subject (disconnect, unsubscribe)."""

from __future__ import annotations

import structlog
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg

from meshcast.proto.bus_pb2 import Control
from meshcast.protocol import Disconnect, DisconnectCode, UnsubscribeCode

from .context import GatewayContext

log = structlog.get_logger(__name__)


async def handle_control(ctx: GatewayContext, msg: Msg) -> None:
    control = Control()
    try:
        control.ParseFromString(msg.data)
    except DecodeError:
        log.warning("bad control message")
        return
    kind = control.WhichOneof("command")
    if kind == "disconnect":
        cmd = control.disconnect
        code = cmd.code or int(DisconnectCode.FORCE_NO_RECONNECT)
        reason = cmd.reason or "force disconnect"
        for client in ctx.hub.clients_of(cmd.user):
            if not cmd.client or cmd.client == client.id:
                client.close(Disconnect(code, reason))
    elif kind == "revoke_token":
        revoke = control.revoke_token
        if not revoke.jti:
            return
        for client in list(ctx.hub.clients.values()):
            if client.jti == revoke.jti:
                client.close(
                    Disconnect(revoke.code or int(DisconnectCode.INVALID_TOKEN), revoke.reason or "token revoked")
                )
                continue
            # A subscription token's jti ends the subscriptions made with it.
            for channel in client.channels_of_token(revoke.jti):
                await ctx.hub.kick(channel, client, UnsubscribeCode.SERVER, "subscription token revoked")
    elif kind == "unsubscribe":
        unsub = control.unsubscribe
        for client in ctx.hub.clients_of(unsub.user):
            if (unsub.client and unsub.client != client.id) or unsub.channel not in client.channels:
                continue
            await ctx.hub.kick(unsub.channel, client, UnsubscribeCode.SERVER, "server unsubscribe")
