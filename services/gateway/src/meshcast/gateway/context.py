"""What command handlers share: the hub, NATS, configuration and the verifier."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

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

# The longest ttl told to a client (as Centrifugo caps it): an SDK arms a timer from
# it, and a JavaScript timer of more than 2^31 ms (24.8 days) fires at once.
MAX_TTL_SECONDS: Final = 365 * 24 * 3600


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

    def ttl(self, expires_at: float | None) -> int:
        """Seconds until `expires_at`, as a connect, refresh or subscribe ttl (0: never),
        at least 1 and at most a year."""
        if expires_at is None:
            return 0
        return min(MAX_TTL_SECONDS, max(1, math.ceil(expires_at - self.clock())))
