"""Who is in which channel, by gateway, without I/O.

Each gateway numbers its membership changes (1, 2, ...). Events apply in
order; a missing number, a heartbeat that stays ahead, or a gateway never
seen before means this instance's copy may be wrong, and the caller fetches
a snapshot of that gateway (`needs_sync`). While a snapshot is on its way the
gateway's events wait, and apply on top of it. A gateway that stops
heartbeating for `timeout` seconds is gone, with all its members.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from meshcast.bus import client_info
from meshcast.proto.bus_pb2 import Publisher
from meshcast.proto.client_pb2 import PresenceResult
from meshcast.proto.presence_pb2 import GatewayHeartbeat, Member, PresenceEvent
from meshcast.protocol.codec import message_to_json

Key = tuple[str, str]  # (channel, client id)


@dataclass(slots=True)
class _Gateway:
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
class Expired:
    gateway: str
    version: int
    members: list[Member]


class PresenceState:
    def __init__(self) -> None:
        self._gateways: dict[str, _Gateway] = {}
        self._channels: dict[str, ChannelMembers] = {}

    # Queries.

    def channel(self, channel: str) -> ChannelMembers:
        return self._channels.get(channel) or ChannelMembers()

    def gateways(self) -> list[str]:
        return list(self._gateways)

    def member_count(self) -> int:
        return sum(len(g.members) for g in self._gateways.values())

    # Changes. Each returns True when the gateway must be synced.

    def event(self, event: PresenceEvent, now: float) -> bool:
        gw = self._gateways.get(event.gateway)
        if gw is None:
            gw = self._gateways[event.gateway] = _Gateway(last_seen=now, syncing=True)
            gw.held.append(event)
            return True
        gw.last_seen = now
        if gw.syncing:
            gw.held.append(event)
            return False
        if event.version <= gw.version:
            return False
        missed = event.version != gw.version + 1
        self._apply(event.gateway, gw, event)
        if missed:
            # A change in between never arrived.
            gw.syncing = True
            return True
        return False

    def heartbeat(self, beat: GatewayHeartbeat, now: float) -> bool:
        gw = self._gateways.get(beat.gateway)
        if gw is None:
            self._gateways[beat.gateway] = _Gateway(last_seen=now, syncing=True)
            return True
        gw.last_seen = now
        if gw.syncing:
            return False
        if beat.version == gw.version:
            gw.behind_beats = 0
            if beat.members != len(gw.members):
                gw.syncing = True
                return True
            return False
        if beat.version > gw.version:
            # Events may still be in flight; behind on two beats in a row is a loss.
            gw.behind_beats += 1
            if gw.behind_beats >= 2:
                gw.syncing = True
                return True
        return False

    def sync_failed(self, gateway: str) -> None:
        """No snapshot came: try again on the next heartbeat."""
        gw = self._gateways.get(gateway)
        if gw is not None:
            gw.syncing = False
            gw.behind_beats = 2

    def snapshot(self, gateway: str, version: int, members: list[Member], now: float) -> bool:
        """Replace a gateway's members with its snapshot, then apply what waited."""
        gw = self._gateways.get(gateway)
        if gw is None:
            gw = self._gateways[gateway] = _Gateway()
        for channel, client in list(gw.members):
            self._remove(gw, channel, client)
        gw.version = version
        gw.last_seen = now
        gw.syncing = False
        gw.behind_beats = 0
        for member in members:
            self._add(gw, member.channel, member.info)
        held, gw.held = sorted(gw.held, key=lambda e: e.version), []
        resync = False
        for event in held:
            if event.version <= gw.version:
                continue
            if event.version != gw.version + 1:
                resync = True
            self._apply(gateway, gw, event)
        if resync:
            gw.syncing = True
        return resync

    def expire(self, now: float, timeout: float) -> list[Expired]:
        gone = []
        for name, gw in list(self._gateways.items()):
            if now - gw.last_seen <= timeout:
                continue
            members = [Member(channel=c, info=i) for (c, _), i in gw.members.items()]
            for channel, client in list(gw.members):
                self._remove(gw, channel, client)
            del self._gateways[name]
            gone.append(Expired(name, gw.version, members))
        return gone

    def _apply(self, name: str, gw: _Gateway, event: PresenceEvent) -> None:
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
