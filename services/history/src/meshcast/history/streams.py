"""One JetStream stream per namespace with history, made from the namespaces config.

The stream captures the namespace's input subjects, keeps ``history_size``
messages per channel for ``history_ttl`` seconds, drops duplicates of an
idempotency key (``Nats-Msg-Id``) within the duplicate window, and
republishes every stored input message to the channel's live subject with
its sequence (the channel offset) and the previous sequence of the same
channel. It also captures the namespace's removal markers (see `recovery`),
which are not republished and age out with the publications they replaced.
Restarting with a changed config (or an older stream without the marker
subjects) updates the stream in place: retained messages stay.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from nats.js import JetStreamContext
from nats.js.api import RePublish, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from meshcast.bus import Subjects
from meshcast.bus.retry import until_ready
from meshcast.common.namespaces import ChannelOptions, ChannelsConfig

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class StreamSpec:
    namespace: str
    config: StreamConfig


def stream_specs(
    channels: ChannelsConfig, subjects: Subjects, *, replicas: int, storage: str, duplicate_window: float
) -> list[StreamSpec]:
    """The stream of every namespace (and of the default one) that keeps history."""
    options: list[tuple[str, ChannelOptions]] = [(ns.name, ns) for ns in channels.namespaces]
    options.append(("", channels.default))
    specs = []
    for namespace, opts in options:
        if not opts.history_size:
            continue
        source = subjects.input_wildcard(namespace)
        config = StreamConfig(
            name=subjects.stream_name(namespace),
            description=f"Meshcast history of namespace {namespace!r}",
            subjects=[source, subjects.removal_wildcard(namespace)],
            max_msgs_per_subject=opts.history_size,
            max_age=opts.history_ttl,
            # JetStream refuses a duplicate window longer than the retention.
            duplicate_window=min(duplicate_window, opts.history_ttl),
            num_replicas=replicas,
            storage=StorageType.MEMORY if storage == "memory" else StorageType.FILE,
            allow_direct=True,
            republish=RePublish(src=source, dest=subjects.live_republish(namespace)),
        )
        specs.append(StreamSpec(namespace, config))
    return specs


async def ensure_streams_when_ready(js: JetStreamContext, specs: list[StreamSpec]) -> None:
    """`ensure_streams`, waited out while JetStream cannot answer (a cluster still
    forming its quorum or electing its leader), however long that takes."""
    await until_ready(lambda: ensure_streams(js, specs), what="history streams")


async def ensure_streams(js: JetStreamContext, specs: list[StreamSpec]) -> None:
    """Create missing streams, update the others to the config (data kept)."""
    for spec in specs:
        name = spec.config.name
        try:
            await js.stream_info(name or "")
        except NotFoundError:
            await js.add_stream(spec.config)
            log.info("history stream created", stream=name, namespace=spec.namespace)
            continue
        await js.update_stream(spec.config)
        log.info("history stream updated", stream=name, namespace=spec.namespace)
