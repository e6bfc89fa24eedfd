"""Every scripted session of the client protocol, by area."""

from __future__ import annotations

from ..script import Session
from . import channels, connect, history, presence, server_api

SESSIONS: list[Session] = [*connect.SESSIONS, *channels.SESSIONS, *history.SESSIONS, *presence.SESSIONS]
API_SESSIONS: list[Session] = [*server_api.SESSIONS]
