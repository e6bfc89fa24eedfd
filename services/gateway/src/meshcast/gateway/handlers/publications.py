"""Stored publications (history service) as the client protocol shows them."""

from __future__ import annotations

from meshcast.bus import client_info
from meshcast.proto.client_pb2 import Publication
from meshcast.proto.history_pb2 import StoredPublication


def client_publication(stored: StoredPublication, epoch: str) -> Publication:
    """`stored` for a client; with `epoch` when it is the channel's first (as Centrifugo's offset 1)."""
    src = stored.publication
    pub = Publication(data=src.data, offset=stored.offset, tags=dict(src.tags), epoch=epoch if stored.first else "")
    if src.HasField("info"):
        pub.info.CopyFrom(client_info(src.info))
    return pub
