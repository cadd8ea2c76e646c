"""No link reaches an internal address (issue 29): the address policy of the link stage,
against real loopback servers that count every request they receive, with a resolver
patched where a test needs a public-looking name (or one that changes its answer)."""

from __future__ import annotations

import gzip
import socket
import time
from collections import Counter
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler

import pytest
from pydantic import ValidationError

from pipeline.article import Article
from pipeline.egress import AddressPolicy, BlockedAddress
from pipeline.feeds import FeedError, fetch_feed, read_feed
from pipeline.link_settings import LinkSettings
from pipeline.links import enrich_articles, host_of
from tests.conftest import serve_handler
from tests.pipeline.link_site import serve_link_site

TEASER = "Our pick of the week. Read more"
REAL_GETADDRINFO = socket.getaddrinfo


@contextmanager
def counting_server(host: str, redirect_to: str | None = None):
    """A server on ``host`` that counts requests; with ``redirect_to`` every answer is a
    302 there, else a small page (what an internal service would give away)."""
    seen: Counter[str] = Counter()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            seen[self.path] += 1
            if redirect_to and self.path != "/robots.txt":
                self.send_response(302)
                self.send_header("Location", redirect_to)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = b"<html><body><p>" + b"internal secret " * 40 + b"</p></body></html>"
            self.send_response(200 if self.path != "/robots.txt" else 404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with serve_handler(Handler, host) as url:
        yield url, seen


def settings(tmp_path, **overrides) -> LinkSettings:
    values = dict(cache_path=tmp_path / "cache.sqlite", per_host_interval_s=0.0,
                  max_attempts=1, connect_timeout_s=1.0, read_timeout_s=2.0)
    return LinkSettings(**(values | overrides))


def fetch(url: str, link_settings: LinkSettings):
    [result] = enrich_articles([Article(id=1, text=TEASER, link=url, source="letter")],
                               link_settings, deadline_s=30)
    return result


@pytest.fixture
def resolver(monkeypatch):
    """Names -> the addresses they resolve to, one list per lookup in turn (the last
    repeats); IP literals and other names resolve as usual."""
    answers: dict[str, list[str]] = {}
    lookups: Counter[str] = Counter()

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            return REAL_GETADDRINFO(host, port, *args, **kwargs)
        turn = answers[host][min(lookups[host], len(answers[host]) - 1)]
        lookups[host] += 1
        return REAL_GETADDRINFO(turn, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers, lookups


@pytest.mark.parametrize("address, refused", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("10.0.0.5", True), ("172.16.3.4", True),
    ("192.168.1.1", True), ("169.254.169.254", True), ("100.64.0.1", True),
    ("0.0.0.0", True), ("224.0.0.1", True), ("::1", True), ("fe80::1", True),
    ("fd12:3456::1", True), ("::ffff:127.0.0.1", True), ("::ffff:169.254.169.254", True),
    ("2002:7f00:0001::1", True), ("8.8.8.8", False), ("93.184.216.34", False),
    ("2606:4700:4700::1111", False), ("::ffff:8.8.8.8", False)])
def test_only_global_addresses_are_admitted(address, refused):
    assert (AddressPolicy().refusal(address) is not None) is refused


def test_the_allow_list_admits_its_networks_and_only_them():
    policy = AddressPolicy.allowing(["10.20.0.0/16", "127.0.0.1/32"])
    assert policy.refusal("10.20.3.4") is None and policy.refusal("127.0.0.1") is None
    assert policy.refusal("::ffff:10.20.3.4") is None  # the address it carries
    assert policy.refusal("10.21.0.1") and policy.refusal("127.0.0.2")
    with pytest.raises(ValidationError, match="allow_networks: 'intranet' is not a network"):
        LinkSettings(allow_networks=["intranet"])


def test_a_link_to_loopback_is_refused_before_any_request(tmp_path):
    with serve_link_site() as site:
        result = fetch(site.url("/news/acme-deal"), settings(tmp_path))
        assert result.provenance.fetch_status == "blocked_address"
        assert "loopback" in result.provenance.detail
        assert not site.requests  # not even robots.txt
        assert result.article.text == TEASER
        allowed = fetch(site.url("/news/acme-deal"),
                        settings(tmp_path, allow_networks=["127.0.0.0/8"]))
        assert allowed.provenance.fetch_status == "ok" and site.requests["/news/acme-deal"] == 1


def test_a_cached_page_is_not_served_once_its_network_is_off_the_allow_list(tmp_path):
    """The policy is checked before the HTTP cache is asked: a page fetched while its
    network was admitted is refused, not served from the cache, after it was removed."""
    with serve_link_site() as site:
        url = site.url("/news/acme-deal")
        admitted = fetch(url, settings(tmp_path, allow_networks=["127.0.0.0/8"]))
        assert admitted.provenance.fetch_status == "ok" and admitted.article.text != TEASER
        again = fetch(url, settings(tmp_path, allow_networks=["127.0.0.0/8"]))
        assert again.provenance.from_cache  # the page is in the shared cache file
        refused = fetch(url, settings(tmp_path))
        assert refused.provenance.fetch_status == "blocked_address"
        assert not refused.provenance.from_cache and refused.article.text == TEASER


@pytest.mark.parametrize("host", ["2130706433", "0x7f.1", "0177.0.0.1", "127.1", "[::1]",
                                  "[::ffff:127.0.0.1]", "localhost"])
def test_numeric_and_other_spellings_of_loopback_are_refused(tmp_path, host):
    with serve_link_site() as site:
        port = site.base.rsplit(":", 1)[1]
        result = fetch(f"http://{host}:{port}/news/acme-deal", settings(tmp_path))
        assert result.provenance.fetch_status in ("blocked_address", "invalid_url"), (
            result.provenance)
        assert not site.requests


def test_a_public_name_that_resolves_to_loopback_is_refused(tmp_path, resolver):
    answers, _ = resolver
    with serve_link_site() as site:
        port = site.base.rsplit(":", 1)[1]
        answers["news.example.com"] = ["127.0.0.1"]
        result = fetch(f"http://news.example.com:{port}/news/acme-deal", settings(tmp_path))
        assert result.provenance.fetch_status == "blocked_address"
        assert "127.0.0.1" in result.provenance.detail
        assert not site.requests


@pytest.mark.parametrize("respect_robots, outcome", [(False, "blocked_address"),
                                                     (True, "robots_disallowed")])
def test_a_name_that_rebinds_to_loopback_after_the_check_is_refused_at_connect(
        tmp_path, resolver, respect_robots, outcome):
    """Public when checked, loopback when connecting: the connection is made to the
    address checked at connect, so the second answer is the one refused (robots.txt
    that cannot be fetched disallows everything, RFC 9309)."""
    answers, lookups = resolver
    with serve_link_site() as site:
        port = site.base.rsplit(":", 1)[1]
        answers["rebind.example.com"] = ["93.184.216.34", "127.0.0.1"]
        result = fetch(f"http://rebind.example.com:{port}/news/acme-deal",
                       settings(tmp_path, respect_robots=respect_robots))
        assert result.provenance.fetch_status == outcome, result.provenance
        assert lookups["rebind.example.com"] >= 2
        assert not site.requests


@pytest.mark.parametrize("target", ["http://127.0.0.2:{port}/admin",
                                    "http://169.254.169.254/latest/meta-data/",
                                    "http://[::ffff:127.0.0.2]:{port}/admin"])
def test_a_redirect_to_an_internal_address_is_refused_at_the_hop(tmp_path, target):
    with counting_server("127.0.0.2") as (internal, internal_seen):
        port = internal.rsplit(":", 1)[1]
        with counting_server("127.0.0.1", redirect_to=target.format(port=port)) as (
                public, public_seen):
            # the redirecting site is admitted (as a public one would be); 127.0.0.2 is not
            result = fetch(f"{public}/story", settings(tmp_path,
                                                       allow_networks=["127.0.0.1/32"]))
    assert result.provenance.fetch_status == "blocked_address", result.provenance
    assert result.provenance.redirects == 1 and public_seen["/story"] == 1
    assert not internal_seen


def test_the_policy_raises_for_a_refused_name_and_resolves_an_admitted_one(resolver):
    answers, _ = resolver
    answers["intranet.example.com"] = ["10.1.2.3"]
    with pytest.raises(BlockedAddress, match="10.1.2.3"):
        AddressPolicy().resolve("intranet.example.com", 80)
    assert AddressPolicy.allowing(["10.0.0.0/8"]).resolve("intranet.example.com", 80) == [
        "10.1.2.3"]


def test_the_connection_goes_to_the_address_that_was_checked(tmp_path, resolver):
    """Public at the check and at connect, loopback on any later lookup: a client that
    resolved the name again to connect would reach the site; this one connects to the
    public address it checked (unreachable here), and the site sees nothing."""
    answers, _ = resolver
    with serve_link_site() as site:
        port = site.base.rsplit(":", 1)[1]
        answers["late.example.com"] = ["93.184.216.34",
                                       "93.184.216.34", "127.0.0.1"]
        result = fetch(f"http://late.example.com:{port}/news/acme-deal",
                       settings(tmp_path, respect_robots=False, connect_timeout_s=0.5))
        assert result.provenance.fetch_status in ("connection_error", "timeout")
        assert not site.requests


# ---------------------------------------------------------------- feeds

RSS = (b'<?xml version="1.0"?><rss version="2.0"><channel><title>T</title>'
       b'<item><title>Acme buys Widget</title><link>https://example.com/a</link>'
       b'<description>Acme agreed to buy Widget.</description></item></channel></rss>')


@contextmanager
def feed_server(mode: str):
    """``ok``: a small RSS feed; ``bomb``: 5 MB of gzip-compressed padding (5 kB on the
    wire); ``drip``: a byte every 0.2 s."""
    seen: Counter[str] = Counter()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            seen[self.path] += 1
            self.send_response(200)
            self.send_header("Content-Type", "application/rss+xml")
            if mode == "bomb":
                body = gzip.compress(RSS[:-16] + b" " * 5_000_000 + RSS[-16:])
                self.send_header("Content-Encoding", "gzip")
            else:
                body = RSS
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                if mode == "drip":
                    for byte in body:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(0.2)
                else:
                    self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    with serve_handler(Handler) as url:
        yield url, seen


def test_a_feed_on_an_internal_address_is_refused_unless_allowed():
    with feed_server("ok") as (url, seen):
        with pytest.raises(FeedError, match="refused address .*loopback.*allow_networks") as info:
            read_feed(f"{url}/feed.xml", "internal", timeout_s=5)
        assert info.value.kind == "blocked_address"  # the metrics' kind label, as data
        assert not seen
        result = read_feed(f"{url}/feed.xml", "intranet", timeout_s=5,
                           allow_networks=["127.0.0.0/8"])
        assert [a.title for a in result.articles] == ["Acme buys Widget"]


def test_a_feed_redirecting_to_an_internal_address_is_refused_at_the_hop():
    with counting_server("127.0.0.2") as (internal, internal_seen):
        with counting_server("127.0.0.1", redirect_to=f"{internal}/admin") as (public, _):
            with pytest.raises(FeedError, match="refused address 127.0.0.2"):
                read_feed(f"{public}/feed.xml", "redirecting", timeout_s=5,
                          allow_networks=["127.0.0.1/32"])
    assert not internal_seen


def test_a_compressed_feed_bomb_stops_at_the_byte_cap():
    with feed_server("bomb") as (url, _):
        with pytest.raises(FeedError, match="more than 1000000 bytes after decompression") as info:
            fetch_feed(f"{url}/feed.xml", 5, allow_networks=["127.0.0.0/8"],
                       max_bytes=1_000_000)
        assert info.value.kind == "too_large"


def test_a_dripping_feed_stops_at_the_wall_clock_deadline():
    with feed_server("drip") as (url, _):
        started = time.monotonic()
        with pytest.raises(FeedError, match="not complete after 1 s") as info:
            read_feed(f"{url}/feed.xml", "drip", timeout_s=1.0, allow_networks=["127.0.0.0/8"])
        assert info.value.kind == "timeout"  # was counted as "connection" (no "timed out")
        assert time.monotonic() - started < 3  # each byte came well within the read timeout


# ---------------------------------------------------------------- slow answers

@contextmanager
def dripping_site(drip: str):
    """``drip`` is ``/robots.txt`` or ``/story`` (a 302 whose body drips): that answer
    sends its 60-byte body a byte every 0.1 s; everything else answers at once."""
    page = (b"<html><body><article><p>" + b"Acme agreed to buy Widget for cash. " * 20
            + b"</p></article></body></html>")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            status, headers, body = 200, {"Content-Type": "text/html"}, page
            if self.path == "/robots.txt":
                headers, body = {"Content-Type": "text/plain"}, b"User-agent: *\nAllow: /\n"
            if self.path == "/story":
                status, headers = 302, {"Location": "/news"}
            if self.path == drip:
                body = (body + b" " * 60)[:60]
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                for index in range(len(body)):
                    self.wfile.write(body[index:index + 1])
                    self.wfile.flush()
                    if self.path == drip:
                        time.sleep(0.1)
            except (BrokenPipeError, ConnectionResetError):
                pass

    with serve_handler(Handler) as url:
        yield url


@pytest.mark.parametrize("drip, outcome", [("/robots.txt", "robots_disallowed"),
                                           ("/story", "ok")])
def test_a_dripping_robots_or_redirect_body_is_cut_at_the_page_deadline(tmp_path, drip,
                                                                         outcome):
    """Each byte comes well within the read timeout; the 6 s body is cut at the 1 s page
    deadline (robots.txt then counts as unreachable: everything disallowed, RFC 9309; the
    redirect is followed without the rest of its body)."""
    with dripping_site(drip) as site:
        started = time.monotonic()
        result = fetch(f"{site}/story", settings(tmp_path, page_timeout_s=1.0,
                                                 allow_networks=["127.0.0.0/8"]))
        assert time.monotonic() - started < 4
    assert result.provenance.fetch_status == outcome, result.provenance


def test_url_credentials_never_reach_the_host_label():
    assert host_of("https://alice:s3cret@News.Example.com:8443/a?b=c") == "news.example.com:8443"
    assert host_of("http://token@example.com/") == "example.com"
