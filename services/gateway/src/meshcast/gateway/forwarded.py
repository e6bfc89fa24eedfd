"""The client's address behind trusted proxies (an Ingress, a load balancer).

Behind a proxy every TCP peer is the proxy, so per-IP limits keyed on the peer
would count every client as one. `X-Forwarded-For` names the real client, but
anyone can send one: it is read only when the TCP peer is a trusted proxy
(``MESHCAST_TRUSTED_PROXIES``, CIDRs, none by default), and then from the right,
the way each proxy appends the peer it saw:

- the peer is not trusted: the peer, whatever the headers say;
- else the rightmost address of ``X-Forwarded-For`` (every such header, in order)
  that is not itself a trusted proxy: what the outermost trusted proxy saw;
- every address is trusted (a health check from inside), or the header is
  missing: the leftmost trusted hop reached;
- an entry that is not an address stops the walk (only a client writes one):
  the last hop reached before it.

Everything here is pure: addresses and header values in, an address out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

FORWARDED_FOR = "X-Forwarded-For"
# More hops than any real proxy chain; a longer header is a client's invention.
MAX_HOPS = 32


def parse_networks(values: Iterable[str]) -> list[Network]:
    """CIDRs ("10.0.0.0/8", "fd00::/8"; a bare address is one host); ValueError names the bad one."""
    networks = []
    for value in values:
        text = value.strip()
        try:
            networks.append(ipaddress.ip_network(text, strict=True))
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a CIDR ({exc})") from None
    return networks


def parse_address(text: str) -> Address | None:
    """An address as proxies write them: bare, ``[v6]``, ``v4:port`` or ``[v6]:port``; None if not one."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (end + 1 < len(text) and not text[end + 1 :].startswith(":")):
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """Which TCP peers may tell the client's address, and what they tell."""

    def __init__(self, networks: Sequence[Network]) -> None:
        self._networks = tuple(networks)

    @classmethod
    def of(cls, cidrs: Iterable[str]) -> TrustedProxies:
        return cls(parse_networks(cidrs))

    def __bool__(self) -> bool:
        return bool(self._networks)

    def trusts(self, address: str | Address | None) -> bool:
        if not self._networks or address is None:
            return False
        parsed = parse_address(address) if isinstance(address, str) else address
        return parsed is not None and any(parsed in network for network in self._networks)

    def client_address(self, peer: str, forwarded_for: Iterable[str] = ()) -> str:
        """The client's address for a connection from `peer` with these ``X-Forwarded-For`` values."""
        hop = parse_address(peer)
        if hop is None or not self.trusts(hop):
            return str(hop) if hop is not None else peer
        entries = [entry for value in forwarded_for for entry in value.split(",")]
        for entry in reversed(entries[-MAX_HOPS:]):
            address = parse_address(entry)
            if address is None:
                break
            hop = address
            if not self.trusts(hop):
                break
        return str(hop)
