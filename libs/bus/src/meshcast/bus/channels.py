"""Channel name grammar of the client protocol (namespaces, private, user-limited).

``[$]namespace:name[#user1,user2]``: ``$`` marks a private channel (a
subscription token is required), the text before the first separator is the
namespace (none when there is no separator), and ``#`` ends the name with
the users allowed in a user-limited channel.
"""

from __future__ import annotations

from typing import Final

PRIVATE_PREFIX: Final = "$"
USER_BOUNDARY: Final = "#"
USER_SEPARATOR: Final = ","


def namespace_of(channel: str, separator: str = ":") -> str:
    """The namespace of `channel`; "" for a channel without one."""
    name = channel.removeprefix(PRIVATE_PREFIX)
    ns, sep, _ = name.partition(separator)
    return ns if sep else ""


def name_of(channel: str, separator: str = ":") -> str:
    """What follows `channel`'s namespace (and ``$``); all of it for a channel without one."""
    name = channel.removeprefix(PRIVATE_PREFIX)
    ns, sep, rest = name.partition(separator)
    return rest if sep else ns


def is_private(channel: str) -> bool:
    return channel.startswith(PRIVATE_PREFIX)


def allowed_users(channel: str) -> frozenset[str] | None:
    """The users of a user-limited channel; None when the channel is not one."""
    _, boundary, users = channel.rpartition(USER_BOUNDARY)
    if not boundary:
        return None
    return frozenset(u for u in users.split(USER_SEPARATOR) if u)
