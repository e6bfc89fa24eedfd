"""The client's address behind trusted proxies (gateway/forwarded.py), and its setting."""

from __future__ import annotations

import pytest

from meshcast.common.settings import ConfigError
from meshcast.gateway.forwarded import MAX_HOPS, TrustedProxies, parse_address
from meshcast.gateway.settings import GatewaySettings

INGRESS = TrustedProxies.of(["10.0.0.0/8", "fd00::/8"])


def test_an_untrusted_peer_is_the_client_whatever_it_forwards() -> None:
    assert INGRESS.client_address("203.0.113.7", ["198.51.100.1"]) == "203.0.113.7"
    assert TrustedProxies.of([]).client_address("10.0.0.1", ["198.51.100.1"]) == "10.0.0.1"


def test_a_trusted_peer_names_the_rightmost_untrusted_address() -> None:
    # The client forged the leftmost entry; the ingress appended what it saw.
    assert INGRESS.client_address("10.1.2.3", ["6.6.6.6, 203.0.113.9"]) == "203.0.113.9"
    # Two trusted hops: the outer one's peer is the client.
    assert INGRESS.client_address("10.1.2.3", ["6.6.6.6, 203.0.113.9, 10.9.9.9"]) == "203.0.113.9"
    # Several headers count as one list, in order.
    assert INGRESS.client_address("10.1.2.3", ["6.6.6.6", "203.0.113.9", "10.9.9.9"]) == "203.0.113.9"
    assert INGRESS.client_address("fd00::1", ["2001:db8::5"]) == "2001:db8::5"


def test_without_an_untrusted_address_the_leftmost_trusted_hop_is_kept() -> None:
    assert INGRESS.client_address("10.1.2.3") == "10.1.2.3"
    assert INGRESS.client_address("10.1.2.3", ["10.4.4.4"]) == "10.4.4.4"


def test_garbage_stops_the_walk_at_the_last_hop_reached() -> None:
    assert INGRESS.client_address("10.1.2.3", ["unknown, 10.4.4.4"]) == "10.4.4.4"
    assert INGRESS.client_address("10.1.2.3", ["203.0.113.9, ;drop table"]) == "10.1.2.3"
    assert INGRESS.client_address("10.1.2.3", [""]) == "10.1.2.3"


def test_only_the_last_hops_are_read() -> None:
    forged = ", ".join(["203.0.113.1"] + ["10.0.0.2"] * MAX_HOPS)
    assert INGRESS.client_address("10.1.2.3", [forged]) == "10.0.0.2"


def test_addresses_as_proxies_write_them() -> None:
    assert str(parse_address("203.0.113.9:4711")) == "203.0.113.9"
    assert str(parse_address("[2001:db8::5]:443")) == "2001:db8::5"
    assert str(parse_address("[2001:db8::5]")) == "2001:db8::5"
    assert str(parse_address("::ffff:10.0.0.1")) == "10.0.0.1"
    assert parse_address("[2001:db8::5") is None
    assert parse_address("example.com") is None
    assert INGRESS.trusts("::ffff:10.0.0.1")


def test_trusted_proxies_come_comma_separated_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHCAST_TRUSTED_PROXIES", "10.0.0.0/8, 192.168.0.0/16,fd00::/8")
    assert GatewaySettings.load().trusted_proxies == ["10.0.0.0/8", "192.168.0.0/16", "fd00::/8"]
    monkeypatch.setenv("MESHCAST_TRUSTED_PROXIES", '["10.0.0.0/8"]')
    assert GatewaySettings.load().trusted_proxies == ["10.0.0.0/8"]
    monkeypatch.setenv("MESHCAST_TRUSTED_PROXIES", "")
    assert GatewaySettings.load().trusted_proxies == []
    monkeypatch.delenv("MESHCAST_TRUSTED_PROXIES")
    assert GatewaySettings.load().trusted_proxies == []


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "10.0.0.1/8", "ingress", "10.0.0.0/8,,nope"])
def test_a_bad_cidr_stops_the_gateway_naming_the_setting(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv("MESHCAST_TRUSTED_PROXIES", bad)
    with pytest.raises(ConfigError, match="trusted_proxies"):
        GatewaySettings.load()
