"""The stream MESHCAST_EVENTS, made and kept to the configuration by its owner.

It captures every event subject (``<p>.events.v1.>``), keeps events for
``events_max_age`` seconds and at most ``events_max_bytes`` (the oldest go
first), drops a message whose ``Nats-Msg-Id`` it stored within the duplicate
window, and refuses to delete single messages: an event once stored stays
until it ages out. Restarting with a changed configuration updates the
stream in place; its events stay.
"""

from __future__ import annotations

import structlog
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from meshcast.bus import Subjects
from meshcast.bus.retry import until_ready

from .settings import EventsSettings

log = structlog.get_logger(__name__)


def stream_config(subjects: Subjects, settings: EventsSettings) -> StreamConfig:
    return StreamConfig(
        name=subjects.events_stream,
        description="Meshcast lifecycle events (services/events)",
        subjects=[subjects.events_wildcard()],
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        max_age=settings.events_max_age,
        max_bytes=settings.events_max_bytes,
        duplicate_window=settings.events_duplicate_window,
        num_replicas=settings.events_replicas,
        storage=StorageType.MEMORY if settings.events_storage == "memory" else StorageType.FILE,
        allow_direct=True,
        deny_delete=True,
    )


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream, or update it to `config` (events kept), once JetStream can answer."""

    async def ensure() -> None:
        name = config.name or ""
        try:
            await js.stream_info(name)
        except NotFoundError:
            await js.add_stream(config)
            log.info("events stream created", stream=name, replicas=config.num_replicas)
            return
        await js.update_stream(config)
        log.info("events stream updated", stream=name, replicas=config.num_replicas)

    await until_ready(ensure, what="events stream")
