"""What command handlers share: the hub, NATS, configuration and the verifier."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nats.aio.client import Client as Nats
from nats.js import JetStreamContext

from meshcast.bus import Subjects
from meshcast.common.namespaces import ChannelsConfig
from meshcast.common.node import VERSION
from meshcast.tokens.revocations import Revocations

from .auth import TokenVerifier
from .events import EventOutbox
from .history import HistoryClient
from .hub import Hub
from .presence import PresenceReporter
from .proxy import ProxyClient
from .settings import GatewaySettings


@dataclass(slots=True)
class GatewayContext:
    settings: GatewaySettings
    channels: ChannelsConfig
    subjects: Subjects
    nc: Nats
    js: JetStreamContext
    history: HistoryClient
    hub: Hub
    presence: PresenceReporter
    revocations: Revocations
    proxy: ProxyClient
    verifier: TokenVerifier
    clock: Callable[[], float]
    # None when lifecycle events are off (MESHCAST_EVENTS_ENABLED=false).
    events: EventOutbox | None = None
    version: str = VERSION
