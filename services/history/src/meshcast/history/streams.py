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

Every stream has a byte cap (``max_bytes``: the namespace's
``history_max_bytes``, else the service's ``MESHCAST_HISTORY_MAX_BYTES``) with
``discard: old``: a namespace over its cap loses its oldest publications, never
a new one, and never the room of the others. JetStream reserves each cap on the
servers holding the stream, so the caps together (checked against
``MESHCAST_HISTORY_TOTAL_MAX_BYTES`` at start) bound what history can take from
the store; an update to a lower cap (a restart with a new config) trims the
oldest at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RePublish, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError

from meshcast.bus import Subjects
from meshcast.bus.retry import until_ready
from meshcast.common.namespaces import ChannelOptions, ChannelsConfig
from meshcast.common.settings import ConfigError

log = structlog.get_logger(__name__)

# The stream caps' defaults (HistorySettings): a namespace's stream, and all of them together.
DEFAULT_STREAM_MAX_BYTES = 256 << 20
DEFAULT_TOTAL_MAX_BYTES = 4 << 30
# JetStream: 10047 insufficient storage resources (a stream's reservation does not fit).
_INSUFFICIENT_STORAGE = 10047


class StreamsDoNotFit(ConfigError):
    """JetStream has no room to reserve a history stream's byte cap."""


@dataclass(frozen=True, slots=True)
class StreamSpec:
    namespace: str
    config: StreamConfig


def stream_specs(
    channels: ChannelsConfig,
    subjects: Subjects,
    *,
    replicas: int,
    storage: str,
    duplicate_window: float,
    max_bytes: int = DEFAULT_STREAM_MAX_BYTES,
    total_max_bytes: int = DEFAULT_TOTAL_MAX_BYTES,
) -> list[StreamSpec]:
    """The stream of every namespace (and of the default one) that keeps history.

    ConfigError when their byte caps add up to more than `total_max_bytes`."""
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
            max_bytes=int(opts.history_max_bytes or max_bytes),
            discard=DiscardPolicy.OLD,
            max_age=opts.history_ttl,
            # JetStream refuses a duplicate window longer than the retention.
            duplicate_window=min(duplicate_window, opts.history_ttl),
            num_replicas=replicas,
            storage=StorageType.MEMORY if storage == "memory" else StorageType.FILE,
            allow_direct=True,
            republish=RePublish(src=source, dest=subjects.live_republish(namespace)),
        )
        specs.append(StreamSpec(namespace, config))
    _check_total(specs, total_max_bytes)
    return specs


def _check_total(specs: list[StreamSpec], total_max_bytes: int) -> None:
    total = sum(spec.config.max_bytes or 0 for spec in specs)
    if total > total_max_bytes:
        caps = ", ".join(f"{spec.namespace or '(default)'}={spec.config.max_bytes}" for spec in specs)
        raise ConfigError(
            f"history_total_max_bytes: the history streams' byte caps add up to {total} bytes, more than"
            f" MESHCAST_HISTORY_TOTAL_MAX_BYTES={total_max_bytes} ({caps}); lower a namespace's"
            " history_max_bytes or MESHCAST_HISTORY_MAX_BYTES, or raise the total with JetStream's store"
        )


async def ensure_streams_when_ready(js: JetStreamContext, specs: list[StreamSpec]) -> None:
    """`ensure_streams`, waited out while JetStream cannot answer (a cluster still
    forming its quorum or electing its leader), however long that takes."""
    await until_ready(lambda: ensure_streams(js, specs), what="history streams")


async def ensure_streams(js: JetStreamContext, specs: list[StreamSpec]) -> None:
    """Create missing streams, update the others to the config (data kept, but never
    more than a lowered cap: the oldest go). StreamsDoNotFit when JetStream cannot
    reserve a stream's cap."""
    for spec in specs:
        name = spec.config.name
        try:
            try:
                await js.stream_info(name or "")
            except NotFoundError:
                await js.add_stream(spec.config)
                log.info(
                    "history stream created", stream=name, namespace=spec.namespace, max_bytes=spec.config.max_bytes
                )
                continue
            await js.update_stream(spec.config)
        except APIError as exc:
            if exc.err_code != _INSUFFICIENT_STORAGE:
                raise
            log.error("history stream does not fit jetstream", stream=name, max_bytes=spec.config.max_bytes)
            raise StreamsDoNotFit(
                f"history stream {name} (namespace {spec.namespace!r}): JetStream cannot reserve its"
                f" max_bytes={spec.config.max_bytes} ({exc.description}); lower its history_max_bytes,"
                " MESHCAST_HISTORY_MAX_BYTES or MESHCAST_HISTORY_TOTAL_MAX_BYTES, or give JetStream more store"
            ) from exc
        log.info("history stream updated", stream=name, namespace=spec.namespace, max_bytes=spec.config.max_bytes)
