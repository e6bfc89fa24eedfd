"""History and events streams reserve their byte caps in JetStream's store: together they
leave room for the KV buckets (revocations, leases, the events ledger), in every overlay and
in compose, and the namespaces config fits the history service's total."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshcast.bus import Subjects
from meshcast.common.namespaces import ChannelsConfig
from meshcast.events.settings import EventsSettings
from meshcast.history.settings import HistorySettings
from meshcast.history.streams import stream_specs

from .overlays import (
    COMPOSE,
    K8S,
    OVERLAYS,
    Manifest,
    compose_env,
    compose_file,
    container,
    env,
    nats_size,
    one,
    overlays,
)

__all__ = ["overlays"]  # the fixture

# What the reserved caps may take of the store: the rest is for the unreserved KV buckets.
RESERVED_SHARE = 0.8
NAMESPACES = K8S / "base" / "config" / "namespaces.yaml"


def _settings(cls: type[Any], values: dict[str, str]) -> Any:
    fields = {name[len("MESHCAST_") :].lower(): v for name, v in values.items() if name.startswith("MESHCAST_")}
    known = {k: v for k, v in fields.items() if k in cls.model_fields}
    return cls.model_validate(known)


def _reserved(history: HistorySettings, events: EventsSettings, namespaces: Path) -> int:
    """The bytes every history stream and the events stream reserve on each NATS server
    (each stream has at most one replica per server)."""
    channels = ChannelsConfig.model_validate(yaml.safe_load(namespaces.read_text()))
    specs = stream_specs(
        channels,
        Subjects(),
        replicas=history.history_replicas,
        storage=history.history_storage,
        duplicate_window=history.duplicate_window,
        max_bytes=history.history_max_bytes,
        total_max_bytes=history.history_total_max_bytes,
    )
    # The total is the bound: a namespace added later may take up to it.
    assert sum(spec.config.max_bytes or 0 for spec in specs) <= history.history_total_max_bytes
    assert events.events_max_bytes > 0, "the events stream needs a byte cap too"
    assert history.history_storage == events.events_storage == "file"
    return int(history.history_total_max_bytes) + events.events_max_bytes


def _assert_fits(where: str, reserved: int, store: int) -> None:
    assert reserved <= store * RESERVED_SHARE, (
        f"{where}: history and events reserve {reserved / 2**20:.0f} MiB of JetStream's"
        f" {store / 2**20:.0f} MiB: more than {RESERVED_SHARE:.0%}, too little left for the KV buckets"
    )


@pytest.mark.parametrize("name", OVERLAYS)
def test_stream_caps_leave_room_in_jetstream_for_the_kv_buckets(overlays: dict[str, list[Manifest]], name: str) -> None:
    docs = overlays[name]
    history = _settings(HistorySettings, env(container(one(docs, "Deployment", "history"), "history")))
    events = _settings(EventsSettings, env(container(one(docs, "Deployment", "events"), "events")))
    store = nats_size(env(container(one(docs, "StatefulSet", "nats"), "nats"))["JS_MAX_FILE_STORE"])
    _assert_fits(name, _reserved(history, events, NAMESPACES), store)


def test_compose_stream_caps_leave_room_in_jetstream_for_the_kv_buckets() -> None:
    services = compose_file()["services"]
    histories = [s for n, s in services.items() if n.startswith("history-")]
    eventses = [s for n, s in services.items() if n.startswith("events-")]
    assert histories
    assert eventses
    conf = (COMPOSE / "nats" / "nats.conf").read_text()
    match = re.search(r"^\s*max_file_store:\s*(\S+)", conf, re.MULTILINE)
    assert match, "compose/nats/nats.conf sets no max_file_store"
    for history_service in histories:
        for events_service in eventses:
            history = _settings(HistorySettings, compose_env(history_service))
            events = _settings(EventsSettings, compose_env(events_service))
            reserved = _reserved(history, events, COMPOSE.parent / "config" / "namespaces.yaml")
            _assert_fits("compose", reserved, nats_size(match.group(1)))
