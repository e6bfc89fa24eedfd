"""Stored publications (history service) as the client protocol shows them."""

from __future__ import annotations

from meshcast.bus import client_info
from meshcast.proto.client_pb2 import Publication
from meshcast.proto.history_pb2 import StoredPublication


def client_publication(stored: StoredPublication) -> Publication:
    src = stored.publication
    pub = Publication(data=src.data, offset=stored.offset, tags=dict(src.tags))
    if src.HasField("info"):
        pub.info.CopyFrom(client_info(src.info))
    return pub
