"""A Centrifugo v6 config equivalent to a Meshcast namespaces file and gateway limits.

Meshcast's options say who may do what in words of its own; each maps onto
Centrifugo's ``allow_*_for_*`` permissions as Meshcast's gateway decides them
(``services/gateway/src/meshcast/gateway/handlers``):

- subscribe: any user (``allow_subscribe``), anonymous ones too with
  ``allow_subscribe_anonymous`` -> ``allow_subscribe_for_client`` / ``_for_anonymous``;
- publish: without subscribing (``allow_publish``) -> ``allow_publish_for_client``;
- history: any user, subscribed or not (``allow_history``) -> ``allow_history_for_client``,
  anonymous ones where they may subscribe;
- presence: subscribers (``allow_presence``), others with
  ``allow_presence_without_subscribe`` -> ``allow_presence_for_subscriber`` / ``_for_client``;
- ``recovery`` -> ``force_recovery`` (Meshcast positions and recovers every subscriber of such
  a namespace, asked or not);
- ``#`` user-limited channels work in every Meshcast namespace -> ``allow_user_limited_channels``.

Centrifugo has one ``recovery_max_publication_limit`` for all namespaces where Meshcast has
one per namespace: the config takes the value most namespaces have. Options with no
Centrifugo counterpart in a plain config (backend proxies, ``publish_info: false``) are
refused, so a config that is not equivalent is never generated silently.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from meshcast.common.namespaces import ChannelOptions, ChannelsConfig


@dataclass(frozen=True)
class Limits:
    """Client limits both servers get (seconds and counts)."""

    channel_limit: int = 128
    message_size_limit: int = 65536
    ping_interval: int = 25
    pong_timeout: int = 8
    expiry_grace: int = 25
    # How often Centrifugo looks for expired subscriptions (its presence_update_interval);
    # Meshcast's gateway looks every second at most.
    expiry_check: int = 27

    def gateway_env(self) -> dict[str, str]:
        """The same limits as Meshcast gateway settings."""
        return {
            "MESHCAST_MAX_CHANNELS_PER_CONNECTION": str(self.channel_limit),
            "MESHCAST_MAX_MESSAGE_SIZE": str(self.message_size_limit),
            "MESHCAST_PING_INTERVAL": str(self.ping_interval),
            "MESHCAST_PONG_TIMEOUT": str(self.pong_timeout),
            "MESHCAST_EXPIRY_GRACE": str(self.expiry_grace),
        }


class NotEquivalent(ValueError):
    """A Meshcast option that a Centrifugo config cannot express."""


def channel_options(options: ChannelOptions) -> dict[str, Any]:
    """Centrifugo's channel options for one Meshcast namespace (or the default)."""
    if options.proxy_subscribe or options.proxy_publish:
        raise NotEquivalent("proxy_subscribe/proxy_publish need a proxy backend on both sides")
    if not options.publish_info:
        raise NotEquivalent("Centrifugo always attaches the publisher's info: publish_info: false has no counterpart")
    history = bool(options.history_size) and options.allow_history
    out: dict[str, Any] = {
        "presence": options.presence,
        "join_leave": options.join_leave,
        "force_push_join_leave": options.force_push_join_leave,
        "history_size": options.history_size,
        "history_ttl": f"{options.history_ttl:g}s",
        "force_recovery": options.recovery,
        "allow_subscribe_for_client": options.allow_subscribe,
        "allow_subscribe_for_anonymous": options.allow_subscribe and options.allow_subscribe_anonymous,
        "allow_publish_for_client": options.allow_publish,
        "allow_publish_for_anonymous": options.allow_publish and options.allow_publish_anonymous,
        "allow_history_for_client": history,
        "allow_history_for_anonymous": history and options.allow_subscribe_anonymous,
        "allow_presence_for_subscriber": options.presence and options.allow_presence,
        "allow_presence_for_client": options.presence
        and options.allow_presence
        and options.allow_presence_without_subscribe,
        "allow_presence_for_anonymous": options.presence and options.allow_presence,
        "allow_user_limited_channels": True,
    }
    if options.channel_regex is not None:
        out["channel_regex"] = options.channel_regex
    return out


def centrifugo_config(channels: ChannelsConfig, *, secret: str, api_key: str, limits: Limits) -> dict[str, Any]:
    """The whole config (ports are added by `CentrifugoProcess`)."""
    every = [channels.default, *channels.namespaces]
    [(recovery_limit, _)] = Counter(o.recovery_max_publications for o in every).most_common(1)
    return {
        "log": {"level": "info"},
        "usage_stats": {"disabled": True},
        "client": {
            "token": {"hmac_secret_key": secret},
            "allow_anonymous_connect_without_token": channels.allow_anonymous,
            "channel_limit": limits.channel_limit,
            "ping_interval": f"{limits.ping_interval}s",
            "pong_timeout": f"{limits.pong_timeout}s",
            "expired_close_delay": f"{limits.expiry_grace}s",
            "expired_sub_close_delay": f"{limits.expiry_grace}s",
            "presence_update_interval": f"{limits.expiry_check}s",
            "recovery_max_publication_limit": recovery_limit,
        },
        "channel": {
            "namespace_boundary": channels.namespace_separator,
            "max_length": channels.max_channel_length,
            "without_namespace": channel_options(channels.default),
            "namespaces": [{"name": ns.name, **channel_options(ns)} for ns in channels.namespaces],
        },
        "websocket": {"message_size_limit": limits.message_size_limit},
        "http_api": {"key": api_key},
        "grpc_api": {"enabled": True, "key": api_key},
    }
