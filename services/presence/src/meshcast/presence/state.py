"""Who is in which channel, by gateway and epoch, without I/O.

Each gateway numbers its membership changes (1, 2, ...). Events apply in
order; a missing number, a heartbeat that stays ahead, or a gateway never
seen before means this instance's copy may be wrong, and the caller fetches
a snapshot of that gateway (`Need.SNAPSHOT`). While a snapshot is on its way
the gateway's events wait, and apply on top of it.

Epochs keep what subscribers were told equal to what presence lists. Within
one epoch only the gateway announces (its own join and leave events), so
presence applies its snapshots silently. A gateway silent for `timeout`
seconds is due (`due`); the caller decides, once for all instances, how that
epoch ended: `end` (expired: the members leave, one instance announces the
leaves, and the epoch is over for good) or `resumed` (the gateway came back in
time and carries on in its next epoch). Whatever later arrives from an ended
epoch is refused (`Need.TELL_EXPIRED`: tell the gateway, which then starts its
next epoch by announcing its members as joins). A new epoch of a known gateway
is synced like a new gateway, silently.
"""

from __future__ import annotations

import enum
import json
from collections import Counter
from dataclasses import dataclass, field

from meshcast.bus import client_info
from meshcast.proto.bus_pb2 import Publisher
from meshcast.proto.client_pb2 import PresenceResult
from meshcast.proto.presence_pb2 import GatewayHeartbeat, Member, PresenceEvent
from meshcast.protocol.codec import message_to_json

Key = tuple[str, str]  # (channel, client id)


class Need(enum.Enum):
    """What the caller must do after a message from a gateway."""

    NOTHING = "nothing"
    # Fetch the gateway's snapshot: this copy may be wrong, or is of an older epoch.
    SNAPSHOT = "snapshot"
    # The message is from an epoch that was expired: tell the gateway (`ended_epoch`).
    TELL_EXPIRED = "tell_expired"


@dataclass(slots=True)
class _Gateway:
    epoch: int = 0
    version: int = 0
    members: dict[Key, Publisher] = field(default_factory=dict)
    last_seen: float = 0.0
    syncing: bool = False
    held: list[PresenceEvent] = field(default_factory=list)
    behind_beats: int = 0


@dataclass(frozen=True, slots=True)
class Encoded:
    """One member as a presence answer shows it, encoded once at join."""

    proto: bytes  # a PresenceResult holding just this member
    json: bytes  # "<client>":{...}

    @classmethod
    def of(cls, info: Publisher) -> Encoded:
        shown = client_info(info)
        proto = PresenceResult(presence={info.client: shown}).SerializeToString()
        return cls(proto, (json.dumps(info.client) + ":" + message_to_json(shown)).encode())


@dataclass(slots=True)
class ChannelMembers:
    clients: dict[str, Publisher] = field(default_factory=dict)
    users: Counter[str] = field(default_factory=Counter)
    encoded: dict[str, Encoded] = field(default_factory=dict)

    def add(self, info: Publisher) -> None:
        if info.client not in self.clients:
            self.users[info.user] += 1
        self.clients[info.client] = info
        self.encoded[info.client] = Encoded.of(info)

    def remove(self, client: str) -> None:
        info = self.clients.pop(client, None)
        if info is not None:
            del self.encoded[client]
            self.users[info.user] -= 1
            if self.users[info.user] <= 0:
                del self.users[info.user]


@dataclass(frozen=True, slots=True)
class Epoch:
    """One epoch of one gateway."""

    gateway: str
    epoch: int


@dataclass(frozen=True, slots=True)
class Expired:
    """An ended epoch and the members it had: the leaves to announce."""

    gateway: str
    epoch: int
    version: int
    members: list[Member]


@dataclass(frozen=True, slots=True)
class _Ended:
    epoch: int
    at: float


class PresenceState:
    def __init__(self) -> None:
        self._gateways: dict[str, _Gateway] = {}
        self._channels: dict[str, ChannelMembers] = {}
        self._ended: dict[str, _Ended] = {}

    # Queries.

    def channel(self, channel: str) -> ChannelMembers:
        return self._channels.get(channel) or ChannelMembers()

    def gateways(self) -> list[str]:
        return list(self._gateways)

    def member_count(self) -> int:
        return sum(len(g.members) for g in self._gateways.values())

    def epoch_of(self, gateway: str) -> int | None:
        gw = self._gateways.get(gateway)
        return gw.epoch if gw is not None else None

    def ended_epoch(self, gateway: str) -> int:
        """The last epoch of `gateway` that ended expired (0: none known)."""
        ended = self._ended.get(gateway)
        return ended.epoch if ended is not None else 0

    def is_ended(self, gateway: str, epoch: int) -> bool:
        ended = self._ended.get(gateway)
        return ended is not None and epoch <= ended.epoch

    # Messages from gateways.

    def event(self, event: PresenceEvent, now: float) -> Need:
        gw, need = self._arrival(event.gateway, event.epoch, now)
        if gw is None:
            return need
        if gw.syncing:
            gw.held.append(event)
            return need
        if event.version <= gw.version:
            return Need.NOTHING
        missed = event.version != gw.version + 1
        self._apply(gw, event)
        if missed:
            # A change in between never arrived.
            gw.syncing = True
            return Need.SNAPSHOT
        return Need.NOTHING

    def heartbeat(self, beat: GatewayHeartbeat, now: float) -> Need:
        gw, need = self._arrival(beat.gateway, beat.epoch, now)
        if gw is None or gw.syncing:
            return need
        if beat.version == gw.version:
            gw.behind_beats = 0
            if beat.members != len(gw.members):
                gw.syncing = True
                return Need.SNAPSHOT
            return Need.NOTHING
        if beat.version > gw.version:
            # Events may still be in flight; behind on two beats in a row is a loss.
            gw.behind_beats += 1
            if gw.behind_beats >= 2:
                gw.syncing = True
                return Need.SNAPSHOT
        return Need.NOTHING

    def sync_failed(self, gateway: str) -> None:
        """No snapshot came: try again on the next heartbeat."""
        gw = self._gateways.get(gateway)
        if gw is not None:
            gw.syncing = False
            gw.behind_beats = 2

    def snapshot(self, gateway: str, epoch: int, version: int, members: list[Member], now: float) -> Need:
        """Replace a gateway's members with its snapshot (silently: the gateway
        announced every change of its epoch itself), then apply what waited."""
        if self.is_ended(gateway, epoch):
            return Need.TELL_EXPIRED
        gw = self._gateways.get(gateway)
        if gw is not None and epoch < gw.epoch:
            return Need.SNAPSHOT  # taken before the gateway moved on: ask again
        if gw is None:
            gw = self._gateways[gateway] = _Gateway()
        self._ended.pop(gateway, None)
        for channel, client in list(gw.members):
            self._remove(gw, channel, client)
        gw.epoch, gw.version = epoch, version
        gw.last_seen = now
        gw.syncing = False
        gw.behind_beats = 0
        for member in members:
            self._add(gw, member.channel, member.info)
        held, gw.held = sorted(gw.held, key=lambda e: (e.epoch, e.version)), []
        for n, event in enumerate(held):
            if event.epoch < gw.epoch or (event.epoch == gw.epoch and event.version <= gw.version):
                continue
            if event.epoch > gw.epoch or event.version != gw.version + 1:
                # A newer epoch, or a change the snapshot and the held events both miss.
                gw.held = [e for e in held[n:] if e.epoch >= gw.epoch]
                gw.syncing = True
                return Need.SNAPSHOT
            self._apply(gw, event)
        return Need.NOTHING

    def _arrival(self, gateway: str, epoch: int, now: float) -> tuple[_Gateway | None, Need]:
        """The gateway a message of `epoch` belongs to, or None when it is to be ignored."""
        if self.is_ended(gateway, epoch):
            return None, Need.TELL_EXPIRED
        gw = self._gateways.get(gateway)
        if gw is None:
            self._ended.pop(gateway, None)
            gw = self._gateways[gateway] = _Gateway(epoch=epoch, last_seen=now, syncing=True)
            return gw, Need.SNAPSHOT
        if epoch < gw.epoch:
            return None, Need.NOTHING  # sent before the gateway moved on
        gw.last_seen = now
        if epoch > gw.epoch:
            # Its next epoch: members come from its snapshot (what was told stays told).
            gw.epoch = epoch
            gw.syncing = True
            gw.held = []
            return gw, Need.SNAPSHOT
        return gw, Need.NOTHING

    # Expiry.

    def due(self, now: float, timeout: float) -> list[Epoch]:
        """Gateways silent for more than `timeout`: the caller decides how their epoch ends."""
        return [Epoch(name, gw.epoch) for name, gw in self._gateways.items() if now - gw.last_seen > timeout]

    def end(self, gateway: str, epoch: int, now: float) -> Expired | None:
        """`gateway`'s `epoch` expired: its members leave, and nothing of that epoch applies
        again. The members, or None when this instance no longer holds that epoch."""
        if epoch > self.ended_epoch(gateway):
            # Epoch 0: a gateway older than epochs, which cannot be told; it comes back as before.
            self._ended[gateway] = _Ended(epoch, now)
        gw = self._gateways.get(gateway)
        if gw is None or gw.epoch > epoch:
            return None
        members = [Member(channel=c, info=i) for (c, _), i in gw.members.items()]
        for channel, client in list(gw.members):
            self._remove(gw, channel, client)
        del self._gateways[gateway]
        return Expired(gateway, epoch, gw.version, members)

    def resumed(self, gateway: str, epoch: int, now: float) -> None:
        """`gateway`'s `epoch` did not expire: the gateway is back (and moves to its next epoch)."""
        gw = self._gateways.get(gateway)
        if gw is not None and gw.epoch == epoch:
            gw.last_seen = now

    def refresh(self, now: float) -> None:
        """This instance itself was away (stopped, cut from NATS): what it did not
        hear says nothing of the gateways, so each one counts as just seen."""
        for gw in self._gateways.values():
            gw.last_seen = now

    def forget_ended(self, now: float, keep: float) -> None:
        """Forget epochs that ended more than `keep` seconds ago (the lease bucket's age)."""
        for gateway, ended in list(self._ended.items()):
            if now - ended.at > keep:
                del self._ended[gateway]

    def _apply(self, gw: _Gateway, event: PresenceEvent) -> None:
        gw.version = event.version
        if event.kind == PresenceEvent.JOIN:
            self._add(gw, event.channel, event.info)
        elif event.kind == PresenceEvent.LEAVE:
            self._remove(gw, event.channel, event.info.client)

    def _add(self, gw: _Gateway, channel: str, info: Publisher) -> None:
        gw.members[(channel, info.client)] = info
        self._channels.setdefault(channel, ChannelMembers()).add(info)

    def _remove(self, gw: _Gateway, channel: str, client: str) -> None:
        if gw.members.pop((channel, client), None) is None:
            return
        members = self._channels.get(channel)
        if members is not None:
            members.remove(client)
            if not members.clients:
                del self._channels[channel]
