"""History streams' byte caps on a JetStream with a small store: a namespace over its cap
drops its oldest publications; nothing else is refused (services/history/streams.py)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as Nats
from nats.js.api import DiscardPolicy, StreamInfo

from meshcast.bus import Subjects, close, connect, publish
from meshcast.common.namespaces import ChannelsConfig, Namespace
from meshcast.common.settings import ConfigError
from meshcast.history.streams import StreamsDoNotFit, stream_specs
from meshcast.testing import NatsServer, timeout, within

from .harness import HistoryFactory

KIB = 1024
CAP = 256 * KIB
# JetStream's whole store: every stream's cap is reserved in it.
STORE = 4 << 20
NAMESPACES = f"""
namespaces:
  - name: capped
    history_size: 100000
    history_ttl: 300
    history_max_bytes: {CAP}
  - name: other
    history_size: 100000
    history_ttl: 300
    history_max_bytes: 256KiB
"""
SUBJECTS = Subjects()


class SmallStore(NatsServer):
    """A nats-server whose JetStream holds `STORE` bytes on file and in memory."""

    def _config(self) -> str:
        return re.sub(
            r"jetstream \{ (store_dir: [^}]*?) \}",
            rf"jetstream {{ \1, max_file_store: {STORE}, max_memory_store: {STORE} }}",
            super()._config(),
        )


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    server = SmallStore(tmp_path / "nats").start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Nats]:
    client = await connect(nats_url, name="backend")
    yield client
    await close(client, 5)


async def _info(nc: Nats, namespace: str) -> StreamInfo:
    return await nc.jetstream(timeout=timeout(5)).stream_info(SUBJECTS.stream_name(namespace))


async def _fill(nc: Nats, channel: str, count: int, size: int = KIB) -> list[int]:
    return [await publish(nc, channel, bytes([i % 256]) * size, history=True) for i in range(count)]


async def test_streams_are_created_with_their_byte_cap_and_discard_old(make_history: HistoryFactory, nc: Nats) -> None:
    await make_history(NAMESPACES)
    for namespace in ("capped", "other"):
        config = (await _info(nc, namespace)).config
        assert config.max_bytes == CAP
        assert config.discard == DiscardPolicy.OLD


async def test_a_namespace_over_its_cap_drops_its_oldest_and_nothing_else_is_refused(
    make_history: HistoryFactory, nc: Nats
) -> None:
    await make_history(NAMESPACES)
    # Three caps' worth into one namespace: every publish is stored (acknowledged) ...
    offsets = await _fill(nc, "capped:a", 3 * CAP // KIB)
    assert offsets == sorted(offsets)
    state = (await _info(nc, "capped")).state
    # ... the stream stays under its cap by dropping its oldest, and keeps the newest.
    assert state.bytes <= CAP
    assert state.first_seq > 1
    assert state.last_seq == offsets[-1]
    newest = await nc.jetstream(timeout=timeout(5)).get_msg(SUBJECTS.stream_name("capped"), offsets[-1])
    assert newest.data is not None
    assert bytes([(len(offsets) - 1) % 256]) * KIB in newest.data
    # The other namespace and a KV bucket (as the auth service's revocations) still have their room.
    assert await publish(nc, "other:b", b"still stored", history=True) == 1
    kv = await nc.jetstream(timeout=timeout(5)).create_key_value(bucket="REVOCATIONS_PROBE", history=1)
    assert await kv.put("jti", b"revoked") == 1


async def test_a_restart_adds_the_cap_to_an_old_stream_in_place_keeping_the_newest(
    make_history: HistoryFactory, nc: Nats
) -> None:
    channels = ChannelsConfig(namespaces=[Namespace(name="capped", history_size=100000, history_ttl=300)])
    [spec] = stream_specs(channels, SUBJECTS, replicas=1, storage="file", duplicate_window=60)
    js = nc.jetstream(timeout=timeout(5))
    # As the history service made it before caps: no max_bytes (JetStream's -1, no limit).
    await js.add_stream(spec.config.evolve(max_bytes=-1))
    offsets = await _fill(nc, "capped:a", 2 * CAP // KIB)
    assert (await _info(nc, "capped")).state.bytes > CAP

    await make_history(NAMESPACES)  # ensure_streams' update path
    info = await _info(nc, "capped")
    assert info.config.max_bytes == CAP
    assert info.state.bytes <= CAP
    assert info.state.last_seq == offsets[-1], "the newest publications stay"
    assert info.state.first_seq > 1, "the oldest are trimmed to the cap at once"


async def test_caps_adding_up_past_the_total_stop_the_service_naming_the_setting(
    make_history: HistoryFactory,
) -> None:
    with pytest.raises(ConfigError, match="history_total_max_bytes"):
        await make_history(NAMESPACES, history_total_max_bytes=CAP)


async def test_a_cap_jetstream_cannot_reserve_fails_start_with_what_to_change(make_history: HistoryFactory) -> None:
    history = await make_history(
        "namespaces:\n  - {name: huge, history_size: 10, history_ttl: 60, history_max_bytes: 64MiB}\n",
        start=False,
        history_total_max_bytes="1GiB",
    )
    with pytest.raises(StreamsDoNotFit, match="MESHCAST_HISTORY_MAX_BYTES"):
        await within(history.start(), 20)
