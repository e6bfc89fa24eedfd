"""The server side of one client connection, without I/O.

`ServerSession.receive(data)` takes one WebSocket message and yields the
events it holds: commands to handle, pongs, or the disconnect that bad input
earns (section "Connection lifecycle" of the client protocol v2). Replies are
encoded by `reply_*` methods, which return the bytes of one message for the
shell to write. Time never enters here: the shell owns timers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Final

from google.protobuf.message import Message

from meshcast.proto.client_pb2 import Command, Error, Reply

from .codec import Codec, DecodeFailure, Format, codec_for, encode_varint
from .codes import Disconnect, DisconnectCode, ReplyError

log = logging.getLogger(__name__)

# Every request field of Command, in schema order: a command's method is the
# first one set.
METHODS: Final = (
    "connect",
    "subscribe",
    "unsubscribe",
    "publish",
    "presence",
    "presence_stats",
    "history",
    "ping",
    "send",
    "rpc",
    "refresh",
    "sub_refresh",
)
# Methods whose request must name a channel.
_CHANNEL_METHODS: Final = frozenset(
    {"subscribe", "unsubscribe", "publish", "presence", "presence_stats", "history", "sub_refresh"}
)


class State(Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class CommandReceived:
    """A valid command for the shell to handle (and answer when `id` > 0)."""

    id: int
    method: str
    request: Message


@dataclass(frozen=True, slots=True)
class PongReceived:
    """An empty command answering a server ping (one pong per ping: another is a bad request)."""


@dataclass(frozen=True, slots=True)
class CloseRequired:
    """The input ended the connection: close the socket with this code."""

    disconnect: Disconnect


Event = CommandReceived | PongReceived | CloseRequired


class ServerSession:
    """Protocol state of one connection: what its input means, how replies look."""

    def __init__(self, fmt: Format, *, max_commands_per_frame: int = 100) -> None:
        self.codec: Codec = codec_for(fmt)
        self.format = fmt
        self.state = State.CONNECTING
        self._max_commands = max_commands_per_frame
        # Server pings not answered yet: a pong without one is a bad request, as in Centrifugo.
        self._unanswered_pings = 0

    def receive(self, data: bytes | str) -> Iterator[Event]:
        """The events of one message, classified one at a time as they are taken.

        A frame may hold connect followed by other commands (SDKs batch them):
        each command is checked against the state its predecessors left, so
        the shell handles an event before it takes the next one.
        """
        if self.state is State.CLOSED:
            return iter(())
        decoded = self.codec.decode_commands(data, self._max_commands)
        if isinstance(decoded, DecodeFailure):
            return iter((self._fail(DisconnectCode.BAD_REQUEST, decoded.reason),))
        return self._classify_all(decoded)

    def _classify_all(self, commands: list[Command]) -> Iterator[Event]:
        for command in commands:
            if self.state is State.CLOSED:
                return
            event = self._classify(command)
            yield event
            if isinstance(event, CloseRequired):
                return

    def _classify(self, command: Command) -> Event:
        method = next((m for m in METHODS if command.HasField(m)), None)
        if method is None:
            if command.id == 0:
                return self._pong()
            # An id with no request this schema knows (or none at all).
            return self._fail(DisconnectCode.BAD_REQUEST, "unknown method")
        if command.id == 0 and method != "send":
            return self._fail(DisconnectCode.BAD_REQUEST, f"{method} without id")
        if self.state is State.CONNECTING and method != "connect":
            return self._fail(DisconnectCode.BAD_REQUEST, f"{method} before connect")
        if self.state is State.CONNECTED and method == "connect":
            return self._fail(DisconnectCode.BAD_REQUEST, "connect twice")
        request: Message = getattr(command, method)
        if method in _CHANNEL_METHODS and not getattr(request, "channel", ""):
            return self._fail(DisconnectCode.BAD_REQUEST, f"{method} without channel")
        return CommandReceived(command.id, method, request)

    def _pong(self) -> Event:
        if self.state is not State.CONNECTED or not self._unanswered_pings:
            return self._fail(DisconnectCode.BAD_REQUEST, "unnecessary pong")
        self._unanswered_pings -= 1
        return PongReceived()

    def pinged(self) -> None:
        """The shell wrote a server ping: one pong may answer it."""
        self._unanswered_pings += 1

    def _fail(self, code: DisconnectCode, why: str) -> CloseRequired:
        log.debug("protocol violation: %s", why)
        self.state = State.CLOSED
        return CloseRequired(Disconnect(int(code), code.reason))

    def connected(self) -> None:
        """The connect command succeeded: other commands are allowed now."""
        if self.state is State.CONNECTING:
            self.state = State.CONNECTED

    def closed(self) -> None:
        self.state = State.CLOSED

    def reply_result(self, command_id: int, method: str, result: Message) -> bytes:
        reply = Reply(id=command_id)
        getattr(reply, method).CopyFrom(result)
        return self.codec.encode_reply(reply)

    def reply_encoded(self, command_id: int, method: str, proto_body: bytes, json_body: bytes) -> bytes:
        """A result reply whose result message is already encoded (in both formats)."""
        if self.format is Format.JSON:
            return b'{"id":%d,"%s":%s}' % (command_id, method.encode(), json_body)
        field = Reply.DESCRIPTOR.fields_by_name[method].number
        reply = Reply(id=command_id).SerializeToString()
        reply += encode_varint(field << 3 | 2) + encode_varint(len(proto_body)) + proto_body
        return encode_varint(len(reply)) + reply

    def reply_error(self, command_id: int, error: ReplyError) -> bytes:
        reply = Reply(id=command_id, error=Error(code=error.code, message=error.message, temporary=error.temporary))
        return self.codec.encode_reply(reply)

    def encode(self, reply: Reply) -> bytes:
        return self.codec.encode_reply(reply)

    def join(self, encoded: list[bytes]) -> bytes:
        return self.codec.join(encoded)
