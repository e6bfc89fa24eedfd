"""Channel checks shared by the commands that name a channel."""

from __future__ import annotations

from meshcast.bus import allowed_users, fits_token, is_private
from meshcast.common.namespaces import ChannelOptions
from meshcast.protocol import ErrorCode, ReplyError

from ..client import Client
from ..context import GatewayContext


def resolve(ctx: GatewayContext, channel: str) -> ChannelOptions:
    """The options of a well-formed channel of a known namespace: else error 102 (unknown
    namespace) or 107 (a bad name: too long, control characters, no match of the
    namespace's `channel_regex`, as in Centrifugo)."""
    if len(channel) > min(ctx.settings.max_channel_length, ctx.channels.max_channel_length):
        raise ReplyError.of(ErrorCode.BAD_REQUEST, "channel name too long")
    check_name(channel, "channel name")
    options = ctx.channels.options_for(channel)
    if options is None:
        raise ReplyError.of(ErrorCode.UNKNOWN_CHANNEL)
    if not options.name_allowed(ctx.channels.name_of(channel)):
        raise ReplyError.of(ErrorCode.BAD_REQUEST, "channel name not allowed")
    return options


def check_name(name: str, what: str) -> None:
    """A name that becomes a subject token: printable, and short enough once escaped, or 107."""
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ReplyError.of(ErrorCode.BAD_REQUEST, f"control character in {what}")
    if not fits_token(name):
        raise ReplyError.of(ErrorCode.BAD_REQUEST, f"{what} too long")


def check_user_limited(client: Client, channel: str) -> None:
    """Only the users a ``#``-channel names may use it."""
    users = allowed_users(channel)
    if users is not None and client.user not in users:
        raise ReplyError.of(ErrorCode.PERMISSION_DENIED)


def check_private(client: Client, channel: str) -> None:
    """A ``$`` channel is for those a subscription token let in: its subscribers."""
    if is_private(channel) and channel not in client.channels:
        raise ReplyError.of(ErrorCode.PERMISSION_DENIED, "subscription token required")


def may_read_history(client: Client, options: ChannelOptions) -> bool:
    """Whether the namespace lets `client` read history (anonymous clients where they may subscribe)."""
    return options.allow_history and bool(client.user or options.allow_subscribe_anonymous)
