"""Stored publications (history service) as the client protocol shows them."""

from __future__ import annotations

from meshcast.proto.client_pb2 import ClientInfo, Publication
from meshcast.proto.history_pb2 import StoredPublication


def client_publication(stored: StoredPublication) -> Publication:
    src = stored.publication
    pub = Publication(data=src.data, offset=stored.offset, tags=dict(src.tags))
    if src.HasField("info"):
        i = src.info
        pub.info.CopyFrom(ClientInfo(user=i.user, client=i.client, conn_info=i.conn_info, chan_info=i.chan_info))
    return pub
