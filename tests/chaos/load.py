"""Continuous load on the stack and the truth to judge it by.

`Load` runs the swarm (protocol clients through the balancer, half JSON, half
protobuf), client writers on history and live channels, and a backend that
publishes with `meshcast.bus.publish` over NATS. `StreamTruth` reads what the
history stream holds, the order every subscriber must see. `presence_of`
asks the presence service who is in a channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass, field

from nats.aio.client import Client as Nats
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import Error as JetStreamError

from meshcast.bus import Subjects, publish
from meshcast.bus.requests import request_many
from meshcast.devtools.tokens import connection_token
from meshcast.proto.bus_pb2 import Publication
from meshcast.proto.presence_pb2 import QueryReply, QueryRequest
from meshcast.protocol import Format
from meshcast.testing import timeout
from meshcast.testing.checker import SubscriberLog
from meshcast.testing.swarm import Clock, Member, Writer, pub_data, pub_id

from .stack import HISTORY_NS, LIVE_NS, SECRET, STREAM

SUBJECTS = Subjects()


@dataclass(frozen=True)
class Shape:
    """How much load: members, channels, who writes how often."""

    members: int
    history_channels: int
    live_channels: int
    writer_every: int  # one member in this many publishes
    writer_interval: float  # seconds between one writer's publications
    backend_interval: float  # seconds between the backend's publications into one channel


SHORT = Shape(
    members=24, history_channels=2, live_channels=1, writer_every=4, writer_interval=0.3, backend_interval=0.1
)
FULL = Shape(
    members=300, history_channels=8, live_channels=4, writer_every=10, writer_interval=1.0, backend_interval=0.2
)


@dataclass
class Load:
    nc: Nats
    url: str
    shape: Shape
    clock: Clock = field(default_factory=Clock)
    members: list[Member] = field(default_factory=list)
    writers: list[Writer] = field(default_factory=list)
    stop_writing: asyncio.Event = field(default_factory=asyncio.Event)
    stop_running: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def history_channels(self) -> list[str]:
        return [f"{HISTORY_NS}:c{i}" for i in range(self.shape.history_channels)]

    def live_channels(self) -> list[str]:
        return [f"{LIVE_NS}:c{i}" for i in range(self.shape.live_channels)]

    def channels(self) -> list[str]:
        return [*self.history_channels(), *self.live_channels()]

    async def start(self, ready_within: float) -> None:
        hist, live = self.history_channels(), self.live_channels()
        for i in range(self.shape.members):
            fmt = Format.PROTOBUF if i % 2 else Format.JSON
            member = Member(
                f"m{i}",
                self.url,
                fmt,
                connection_token(SECRET, f"user{i}", ttl=7200),
                [(hist[i % len(hist)], True), (live[i % len(live)], False)],
                clock=self.clock,
                reject_unrecovered=i % 10 == 3,  # some ask for error 112 rather than recovered: false
            )
            self.members.append(member)
            self.tasks.append(asyncio.create_task(member.run(self.stop_running)))
        await self.until(lambda: all(m.ready() for m in self.members), ready_within, "every member subscribed")
        for i, member in enumerate(self.members):
            if i % self.shape.writer_every == 0:
                channel = hist[i % len(hist)] if (i // self.shape.writer_every) % 2 == 0 else live[i % len(live)]
                writer = Writer(f"w{i}", channel)
                self.writers.append(writer)
                self.tasks.append(asyncio.create_task(self._client_writer(member, writer)))
        for channel in self.channels():
            writer = Writer(f"b-{channel}", channel)
            self.writers.append(writer)
            self.tasks.append(asyncio.create_task(self._backend_writer(writer, channel.startswith(HISTORY_NS))))

    async def until(self, condition: object, seconds: float, what: str) -> float:
        """Poll `condition` (a callable) within the scaled `seconds`; the time it took."""
        assert callable(condition)
        started = time.monotonic()
        deadline = started + timeout(seconds)
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout(seconds):.0f} s waiting for {what}")
            await asyncio.sleep(0.1)
        return time.monotonic() - started

    async def _pause(self, interval: float) -> bool:
        """Sleep about `interval`; False once writing should stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop_writing.wait(), interval * random.uniform(0.5, 1.5))
        return not self.stop_writing.is_set()

    async def _client_writer(self, member: Member, writer: Writer) -> None:
        n = 0
        while await self._pause(self.shape.writer_interval):
            if not member.connected:
                continue
            n += 1
            writer.sent += 1
            if await member.publish(writer.channel, pub_data(writer.name, n)):
                writer.acked[f"{writer.name}:{n}"] = self.clock.phase
            else:
                writer.refused += 1

    async def _backend_writer(self, writer: Writer, history: bool) -> None:
        n = 0
        while await self._pause(self.shape.backend_interval):
            n += 1
            writer.sent += 1
            key = f"{writer.name}:{n}"
            for _ in range(3):  # a backend's retry: the same idempotency key, stored once
                try:
                    await publish(
                        self.nc, writer.channel, pub_data(writer.name, n), history=history, idempotency_key=key
                    )
                except (NatsError, JetStreamError, TimeoutError):
                    continue
                writer.acked[key] = self.clock.phase
                break
            else:
                writer.refused += 1

    def acked(self, history: bool) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for writer in self.writers:
            if writer.channel.startswith(HISTORY_NS) == history:
                out.setdefault(writer.channel, {}).update(writer.acked)
        return out

    def logs(self, history: bool) -> list[SubscriberLog]:
        return [ch.log for m in self.members for ch in m.channels.values() if ch.history == history]

    def expected_presence(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {ch: set() for ch in self.channels()}
        for member in self.members:
            for ch in member.channels.values():
                if member.connected and ch.subscribed:
                    out[ch.name].add(member.client_id)
        return out

    async def stop(self) -> None:
        self.stop_writing.set()
        self.stop_running.set()
        for member in self.members:
            await member.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), timeout(30))
        for task in self.tasks:
            task.cancel()


@dataclass
class StreamTruth:
    """What the history stream holds, read incrementally: (offset, id) per channel."""

    nc: Nats
    stored: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    last: int = 0

    async def last_seq(self, seconds: float = 30) -> int:
        js = self.nc.jetstream(timeout=timeout(5))
        deadline = time.monotonic() + timeout(seconds)
        while True:
            try:
                info = await js.stream_info(STREAM)
                return int(info.state.last_seq)
            except (NatsError, JetStreamError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    async def read_to(self, until: int, seconds: float = 60) -> None:
        """Read every message up to stream sequence `until`, riding through elections."""
        deadline = time.monotonic() + timeout(seconds)
        while self.last < until:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the stream was read up to {self.last}, not {until}")
            with contextlib.suppress(NatsError, JetStreamError, TimeoutError):
                await self._read_batch(until)

    async def _read_batch(self, until: int) -> None:
        js = self.nc.jetstream(timeout=timeout(5))
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.last + 1,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=30.0,
            mem_storage=True,
        )
        sub = await js.pull_subscribe(SUBJECTS.input_wildcard(HISTORY_NS), durable=None, stream=STREAM, config=config)
        try:
            while self.last < until:
                for msg in await sub.fetch(batch=2000, timeout=timeout(2)):
                    seq = msg.metadata.sequence.stream
                    if seq <= self.last:
                        continue
                    pub = Publication()
                    pub.ParseFromString(msg.data)
                    self.stored.setdefault(pub.channel, []).append((seq, pub_id(pub.data)))
                    self.last = seq
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def top(self, channel: str) -> int:
        pubs = self.stored.get(channel)
        return pubs[-1][0] if pubs else 0


async def presence_of(nc: Nats, channel: str) -> set[str] | None:
    """Client ids the presence service lists in `channel`; None when it does not answer."""
    parts: list[QueryReply] = []

    def last(msg: object) -> bool:
        part = QueryReply()
        part.ParseFromString(msg.data)  # type: ignore[attr-defined]
        parts.append(part)
        return not part.more or part.HasField("error")

    try:
        await request_many(
            nc, SUBJECTS.presence_query, QueryRequest(channel=channel).SerializeToString(), last=last, wait=timeout(3)
        )
    except (NatsError, TimeoutError):
        return None
    if any(p.HasField("error") for p in parts):
        return None
    members = b",".join(p.json_members for p in parts if p.json_members)
    return set(json.loads(b"{" + members + b"}"))
