"""Commands to every gateway on the control subject.

disconnect (with a whitelist of clients to keep), revoke_token, unsubscribe,
and the server API's subscribe and refresh. A command names a user (and
optionally one of its clients); each gateway applies it to the connections it
holds, so one NATS publish reaches every connection of the user. A command
that does not apply here (no such user, channel already subscribed) is a
no-op: the sender validated it, and another gateway may hold the user.
"""

from __future__ import annotations

import structlog
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg

from meshcast.proto.bus_pb2 import Control, DisconnectUser, RefreshUser, SubscribeUser
from meshcast.proto.client_pb2 import Push, Refresh, Reply, Subscribe, SubscribeRequest
from meshcast.protocol import Disconnect, DisconnectCode, ReplyError, UnsubscribeCode, ws_frame

from .client import Client
from .context import GatewayContext
from .handlers.channels import resolve
from .handlers.subscribe import Grant, subscribe_client

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
        _disconnect(ctx, control.disconnect)
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
    elif kind == "subscribe":
        await _subscribe(ctx, control.subscribe)
    elif kind == "refresh":
        _refresh(ctx, control.refresh)


def _targets(ctx: GatewayContext, user: str, client_id: str) -> list[Client]:
    return [c for c in ctx.hub.clients_of(user) if not client_id or c.id == client_id]


def _disconnect(ctx: GatewayContext, cmd: DisconnectUser) -> None:
    code = cmd.code or int(DisconnectCode.FORCE_NO_RECONNECT)
    reason = cmd.reason or "force disconnect"
    keep = set(cmd.whitelist)
    for client in _targets(ctx, cmd.user, cmd.client):
        if client.id not in keep:
            client.close(Disconnect(code, reason))


def _push(client: Client, push: Push) -> None:
    client.write(ws_frame(client.session.encode(Reply(push=push)), client.format.binary))


async def _subscribe(ctx: GatewayContext, cmd: SubscribeUser) -> None:
    """A server-side subscription: the subscribe push, recovered publications, then live ones."""
    targets = _targets(ctx, cmd.user, cmd.client)
    if not targets:
        return
    try:
        options = resolve(ctx, cmd.channel)
    except ReplyError as err:
        log.info("server subscribe refused", channel=cmd.channel, user=cmd.user, code=err.code)
        return
    expires_at = float(cmd.expire_at) if cmd.expire_at else None
    grant = Grant(info=cmd.info, expires_at=expires_at)
    for client in targets:
        if client.closing or cmd.channel in client.channels:
            continue
        request = SubscribeRequest(channel=cmd.channel)
        if cmd.has_recover_since:
            request.recover, request.epoch, request.offset = True, cmd.recover_epoch, cmd.recover_offset
        try:
            result, then = await subscribe_client(ctx, client, request, options, grant)
        except ReplyError as err:
            log.info("server subscribe failed", channel=cmd.channel, client=client.id, code=err.code)
            continue
        except Exception:  # one connection's failure never stops the others' subscribe
            log.exception("server subscribe crashed", channel=cmd.channel, client=client.id)
            continue
        push = Subscribe(
            recoverable=result.recoverable,
            epoch=result.epoch,
            offset=result.offset,
            positioned=result.positioned,
            data=cmd.data,
        )
        _push(client, Push(channel=cmd.channel, subscribe=push))
        for pub in result.publications:
            _push(client, Push(channel=cmd.channel, pub=pub))
        then()
        log.info("server subscribed", channel=cmd.channel, client=client.id)


def _refresh(ctx: GatewayContext, cmd: RefreshUser) -> None:
    """Expire the connections now, or give them a new expiry (told by a refresh push) and info."""
    for client in _targets(ctx, cmd.user, cmd.client):
        if cmd.expired:
            client.close(Disconnect.of(DisconnectCode.EXPIRED))
            continue
        if cmd.has_info:
            client.info = cmd.info
        if cmd.expire_at:
            client.expires_at = float(cmd.expire_at)
            _push(client, Push(refresh=Refresh(expires=True, ttl=ctx.ttl(cmd.expire_at))))
