"""IPv6 forms that carry an internal IPv4 address, and IPv6 ranges Python 3.11 still
calls global, are refused by the address policy (issue 29); the link stage gives them
``blocked_address`` before any connection is opened."""

from __future__ import annotations

import socket

import pytest

from pipeline.article import Article
from pipeline.egress import AddressPolicy, BlockedAddress
from pipeline.link_settings import LinkSettings
from pipeline.links import enrich_articles

REAL_GETADDRINFO = socket.getaddrinfo


@pytest.mark.parametrize("address, refused", [
    ("64:ff9b::7f00:1", True),        # NAT64 of 127.0.0.1
    ("64:ff9b::a9fe:a9fe", True),     # NAT64 of 169.254.169.254 (cloud metadata)
    ("64:ff9b::a00:5", True),         # NAT64 of 10.0.0.5
    ("::7f00:1", True),               # IPv4-compatible 127.0.0.1 (deprecated form)
    ("::a9fe:a9fe", True),            # IPv4-compatible 169.254.169.254
    ("64:ff9b:1::808:808", True),     # RFC 8215 local-use NAT64: local translator
    ("fec0::1", True),                # deprecated site-local
    ("64:ff9b::808:808", False),      # NAT64 of a public address
    ("2606:4700:4700::1111", False),
])
def test_ipv6_forms_are_judged_by_what_they_reach(address, refused):
    assert (AddressPolicy().refusal(address) is not None) is refused


def test_the_allow_list_admits_a_nat64_form_of_an_allowed_network():
    assert AddressPolicy.allowing(["10.0.0.0/8"]).refusal("64:ff9b::a00:5") is None
    assert AddressPolicy.allowing(["10.0.0.0/8"]).refusal("64:ff9b::7f00:1")


def test_a_name_whose_dns64_answer_carries_metadata_is_refused(monkeypatch, tmp_path):
    """A DNS64 resolver synthesises 64:ff9b::a9fe:a9fe for a name with only the A record
    169.254.169.254: the link is refused and no connection is attempted."""
    connects: list[object] = []

    def getaddrinfo(host, port, *args, **kwargs):
        if host == "metadata.example.com":
            return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "",
                     ("64:ff9b::a9fe:a9fe", port, 0, 0))]
        return REAL_GETADDRINFO(host, port, *args, **kwargs)

    real_create = socket.create_connection

    def create_connection(address, *args, **kwargs):
        connects.append(address)
        return real_create(address, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    with pytest.raises(BlockedAddress, match="169.254.169.254"):
        AddressPolicy().resolve("metadata.example.com", 80)
    settings = LinkSettings(cache_path=tmp_path / "cache.sqlite", per_host_interval_s=0.0,
                            max_attempts=1, connect_timeout_s=1.0)
    [result] = enrich_articles(
        [Article(id=1, text="Read more", link="http://metadata.example.com/latest/",
                 source="letter")], settings, deadline_s=30)
    assert result.provenance.fetch_status == "blocked_address", result.provenance
    assert "169.254.169.254" in result.provenance.detail
    assert connects == []
