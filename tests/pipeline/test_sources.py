"""Readers of feeds (over a real loopback HTTP server), e-mails, mboxes and record files."""

from __future__ import annotations

import json
import threading
import tracemalloc
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from email.message import EmailMessage
from email.policy import SMTP
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

LOOPBACK = ["127.0.0.0/8"]  # the feed server is on loopback; feeds elsewhere are refused

from pipeline.article import Article
from pipeline.emails import read_eml, read_mbox
from pipeline.feeds import FeedError, read_feed
from pipeline.html_text import html_sections, html_to_text
from pipeline.records import (
    drop_unclassifiable,
    iter_json_array,
    read_csv,
    read_json_array,
    read_jsonl,
)
from pipeline.sources import ReadResult
from tests.conftest import free_port, serve_handler

FIXTURES = Path(__file__).parent / "fixtures"
UTC = timezone.utc


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def truncated_rss20() -> bytes:
    """rss20.xml cut off in the middle of its third item's description, after its title
    and link: a tolerant parser returns that item with a title but half a body."""
    data = fixture_bytes("rss20.xml")
    return data[:data.index(b"in an all-cash deal")]


# --------------------------------------------------------------------------- feed server

RELATIVE_LINK_FEED = b"""<?xml version="1.0"?><rss version="2.0"><channel><title>R</title>
<item><title>Relative link</title><link>/news/2024/relative-item</link><guid>item-77</guid>
<description>An item whose link is relative to the feed.</description></item>
</channel></rss>"""


@pytest.fixture(scope="module")
def feed_server() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 serving the feed fixtures, a 500 and a hang."""
    routes = {
        "/rss20": (200, "application/rss+xml; charset=utf-8", fixture_bytes("rss20.xml")),
        "/rss10": (200, "application/rdf+xml", fixture_bytes("rss10.rdf")),
        "/rss091": (200, "text/xml", fixture_bytes("rss091.xml")),
        "/atom": (200, "application/atom+xml", fixture_bytes("atom.xml")),
        "/defects": (200, "application/rss+xml", fixture_bytes("rss20_defects.xml")),
        # No charset in the header, as many servers send it: the XML prolog must win.
        "/latin1": (200, "text/xml", fixture_bytes("latin1.xml")),
        "/truncated": (200, "application/rss+xml", truncated_rss20()),
        "/error": (500, "text/plain", b"upstream feed generator crashed"),
        "/news/relative": (200, "application/rss+xml", RELATIVE_LINK_FEED),
    }
    release_hanging = threading.Event()

    class FeedHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/hang":
                # Accept the request, then say nothing until the test server shuts down.
                release_hanging.wait(10)
                return
            status, content_type, body = routes.get(self.path, (404, "text/plain", b"no such feed"))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
            pass

    with serve_handler(FeedHandler) as url:
        try:
            yield url
        finally:
            release_hanging.set()


# --------------------------------------------------------------------------- HTML → text


def test_html_to_text_drops_code_keeps_paragraphs_and_unescapes():
    html = """<html><head><title>Page title</title><style>p { color: red }</style></head>
    <body><div style="display: none">Preheader teaser text</div>
    <p>Shares   of Acme&nbsp;&amp;&nbsp;Sons rose
       4% &mdash; the caf&eacute; chain&#8217;s best day.</p>
    <script>window.track("x < y && z");</script>
    <p>Second paragraph<br>with a line break.</p><ul><li>one</li><li>two</li></ul></body></html>"""
    assert html_to_text(html) == (
        "Shares of Acme & Sons rose 4% — the café chain’s best day.\n\n"
        "Second paragraph\nwith a line break.\n\none\ntwo")


def test_html_to_text_of_empty_plain_and_comment_only_input():
    assert html_to_text("") == ""
    assert html_to_text("<!-- tracking -->") == ""
    assert html_to_text("AT&amp;T &lt;T&gt; up 2%") == "AT&T <T> up 2%"


def test_html_sections_split_at_headings_in_layout_tables():
    html = """<p>Hello, <a href="https://n.example/web">view in browser</a></p>
    <table><tr><td><h2><a href="https://n.example/1">First</a></h2><p>One.</p></td></tr>
    <tr><td><h2>Second</h2><p>Two <a href="mailto:x@n.example">mail</a>
    <a href="https://n.example/2">link</a></p></td></tr></table>"""
    preamble, first, second = html_sections(html)
    assert (preamble.heading, preamble.text, preamble.link) == (
        None, "Hello, view in browser", "https://n.example/web")
    assert (first.heading, first.text, first.link) == ("First", "One.", "https://n.example/1")
    assert (second.heading, second.text, second.link) == (
        "Second", "Two mail link", "https://n.example/2")


# --------------------------------------------------------------------------- feeds


def test_rss20_html_content_entities_and_dates(feed_server):
    result = read_feed(f"{feed_server}/rss20", "ledger", timeout_s=5, allow_networks=LOOPBACK)
    assert (result.feed_format, result.feed_title) == ("rss20", "Harbour Street Ledger")
    assert result.problems == [] and result.skipped == 0 and not result.malformed
    norvik, brightwater, castellan = result.articles

    assert norvik.id == norvik.link == "https://ledger.example.com/2024/06/norvik-series-b"
    assert norvik.title == "Norvik Robotics raises £40m to scale warehouse arms"
    assert norvik.text.startswith(
        "Norvik Robotics, the Gothenburg maker of picking arms for warehouses, has closed a "
        "£40m Series B led by Fjord & Vale Capital.\n\n"
        "The round values the company at €310m —")
    assert norvik.text.endswith("terms.\nChief executive Saga Lind said the money will fund "
                                "a plant in Łódź.")
    assert "trackView" not in norvik.text and "display" not in norvik.text
    assert norvik.date_published == datetime(2024, 6, 3, 7, 30, tzinfo=UTC)
    assert norvik.source == "ledger"

    assert brightwater.id == "ledger-2024-06-0412"
    assert brightwater.title == "Brightwater Utilities <BWU> flags dividend cut"
    assert brightwater.text == ("Brightwater Utilities said on Tuesday it would cut its interim "
                                "dividend by a third after the regulator’s price review.\n\n"
                                "Shares fell 7% in late trading.")
    assert brightwater.date_published == datetime(2024, 6, 4, 16, 5, tzinfo=UTC)

    assert castellan.id == castellan.link  # no guid: the link identifies it
    assert castellan.date_published == datetime(2024, 6, 5, 11, 0, tzinfo=UTC)


def test_rss10_rdf(feed_server):
    result = read_feed(f"{feed_server}/rss10", "filings", timeout_s=5, allow_networks=LOOPBACK)
    assert result.feed_format == "rss10" and result.problems == []
    assert [(a.id, a.title, a.date_published) for a in result.articles] == [
        ("https://filings.example.org/f/88121",
         "Kestrel Mining files for secondary listing in Toronto",
         datetime(2024, 6, 10, 7, 15, tzinfo=UTC)),
        ("https://filings.example.org/f/88140",
         "Pell & Hart discloses 5.2% stake in Marrow Biotech",
         datetime(2024, 6, 10, 13, 40, tzinfo=UTC)),
    ]
    assert result.articles[1].text.startswith("Investment firm Pell & Hart disclosed")


def test_rss091_items_have_no_dates(feed_server):
    result = read_feed(f"{feed_server}/rss091", "millane", timeout_s=5, allow_networks=LOOPBACK)
    assert result.feed_format.startswith("rss09")
    assert [a.title for a in result.articles] == [
        "Copper futures hit a two-year high", "Regional lender Ashby Trust halts buyback"]
    assert all(a.date_published is None and a.id == a.link for a in result.articles)
    assert result.skipped == 0
    assert len(result.problems) == 2 and all("no date" in p for p in result.problems)


def test_atom_html_title_xhtml_content_and_published_before_updated(feed_server):
    result = read_feed(f"{feed_server}/atom", "sidereal", timeout_s=5, allow_networks=LOOPBACK)
    assert result.feed_format == "atom10" and result.problems == []
    batteries, jets = result.articles
    assert batteries.id == "tag:research.sidereal.example,2024:note-311"
    assert batteries.title == "Why grid batteries are the next utility trade"
    assert batteries.text == ("Grid-scale storage orders grew 80% last year.\n\n"
                              "We expect integrators such as Voltaic Systems to re-rate.")
    assert batteries.link == "https://research.sidereal.example/notes/311"
    assert batteries.date_published == datetime(2024, 6, 11, 5, 45, tzinfo=UTC)
    assert jets.text == ("Lumen Air placed a firm order for 30 regional jets, with options "
                         "for 20 more.\n\nDeliveries start in 2026.")
    assert jets.date_published == datetime(2024, 6, 12, 8, 0, tzinfo=UTC)  # only <updated>


def test_broken_date_is_kept_empty_and_empty_entry_skipped(feed_server):
    result = read_feed(f"{feed_server}/defects", "quayside", timeout_s=5, allow_networks=LOOPBACK)
    tidewater, haldane = result.articles
    assert tidewater.id == "qs-1001" and tidewater.date_published is None
    assert tidewater.text.startswith("Tidewater Ports won a 30-year concession")
    assert haldane.date_published == datetime(2024, 6, 6, 11, 0, tzinfo=UTC)
    assert result.skipped == 1
    assert len(result.problems) == 2
    assert "Febtober 31, 2024" in result.problems[0] and "entry 1" in result.problems[0]
    assert "no title and no text" in result.problems[1] and "entry 2" in result.problems[1]


def test_truncated_feed_yields_the_complete_entries_before_the_cut(feed_server):
    complete = read_feed(fixture_bytes("rss20.xml"), "ledger").articles
    result = read_feed(f"{feed_server}/truncated", "ledger", timeout_s=5, allow_networks=LOOPBACK)
    assert result.malformed
    # The half-read third item is dropped, the two before it are intact.
    assert result.articles == complete[:2]
    assert result.skipped == 1
    assert any("malformed feed" in p for p in result.problems)
    assert any("incomplete" in p for p in result.problems)


def test_non_utf8_feed_decodes_accents(feed_server):
    result = read_feed(f"{feed_server}/latin1", "gazette", timeout_s=5, allow_networks=LOOPBACK)
    assert result.feed_title == "Gazette Économique de Genève"
    (article,) = result.articles
    assert article.title == "Nestlé-Zulieferer Müller & Fils übernimmt Crémerie Sàrl"
    assert article.text.endswith("annoncé vendredi. Coût élevé, marché très concentré.")
    assert "\ufffd" not in article.title + article.text
    assert result.problems == []


def test_http_500_raises_feed_error(feed_server):
    url = f"{feed_server}/error"
    with pytest.raises(FeedError, match="HTTP 500") as caught:
        read_feed(url, "broken", timeout_s=5, allow_networks=LOOPBACK)
    assert caught.value.url == url and caught.value.reason.startswith("HTTP 500")


def test_hanging_server_raises_feed_error_after_the_timeout(feed_server):
    started = time.monotonic()
    with pytest.raises(FeedError, match="timed out after 1 s"):
        read_feed(f"{feed_server}/hang", "slow", timeout_s=1.0, allow_networks=LOOPBACK)
    assert 0.9 <= time.monotonic() - started < 5


def test_connection_refused_raises_feed_error():
    url = f"http://127.0.0.1:{free_port()}/feed"  # nothing listens there
    with pytest.raises(FeedError, match="connection failed") as caught:
        read_feed(url, "gone", timeout_s=1.0, allow_networks=LOOPBACK)
    assert caught.value.url == url


def test_relative_links_are_resolved_but_ids_are_not(feed_server):
    (article,) = read_feed(f"{feed_server}/news/relative", "rel", timeout_s=5, allow_networks=LOOPBACK).articles
    assert article.link == f"{feed_server}/news/2024/relative-item"
    assert article.id == "item-77"  # the same wherever the feed was fetched from


def test_garbage_bytes_yield_no_articles_and_a_problem():
    result = read_feed(b"\x00\xffnot <xml at all", "junk")
    assert result.articles == [] and result.malformed
    assert any("not a recognised RSS or Atom feed" in p for p in result.problems)


# --------------------------------------------------------------------------- e-mail


NEWSLETTER_HTML = """<!DOCTYPE html>
<html><head><title>The Tuesday Term Sheet</title>
<style>h2 { font-family: Georgia, serif; }</style></head>
<body>
<div style="display:none;max-height:0">This week: Halberd, Ostrava Rail, Menlo Grain
  &#8199;&#847;&#8199;&#847;</div>
<table role="presentation" width="100%"><tr><td>
  <p>Good morning — here are this week's three deals.
     <a href="https://termsheet.example/web/118">Read online</a></p>
</td></tr>
<tr><td>
  <h2><a href="https://termsheet.example/118/halberd">Halberd Security buys Pinecrest Labs</a></h2>
  <p>Halberd Security agreed to buy the identity start-up Pinecrest Labs for €640m in cash
     and stock, its largest deal since listing in Frankfurt.</p>
</td></tr>
<tr><td>
  <h2>Ostrava Rail wins €1.1bn signalling contract</h2>
  <p>The Czech operator awarded Ostrava Rail a ten-year contract to replace signalling on
     1,200 km of track.</p>
  <p>Analysts at Brnenská Banka said the win <em>doubles</em> its order book;
     <a href="https://termsheet.example/118/ostrava">full story</a>.</p>
</td></tr>
<tr><td>
  <h2>Menlo Grain raises prices again</h2>
  <p>Menlo Grain lifted list prices 6%, its third increase this year, citing café and
     bakery demand.</p>
</td></tr></table>
</body></html>"""


def build_newsletter() -> bytes:
    message = EmailMessage()
    message["From"] = "The Term Sheet <editors@termsheet.example>"
    message["To"] = "reader@example.org"
    message["Subject"] = "The Tuesday Term Sheet #118"
    message["Date"] = "Tue, 18 Jun 2024 06:30:00 +0200"
    message["Message-ID"] = "<ts-118@termsheet.example>"
    message.set_content("Three deals this week: Halberd, Ostrava Rail, Menlo Grain.\n",
                        cte="quoted-printable")
    message.add_alternative(NEWSLETTER_HTML, subtype="html", cte="quoted-printable")
    return message.as_bytes(policy=SMTP)


def test_html_newsletter_splits_into_items_by_heading():
    raw = build_newsletter()
    # The test is about a real quoted-printable multipart/alternative message.
    assert b"multipart/alternative" in raw and b"quoted-printable" in raw
    assert b"=E2=82=AC640m" in raw and b"=\r\n" in raw  # encoded euro sign, soft line break

    result = read_eml(raw, "termsheet")
    assert result.skipped == 0 and result.problems == []
    assert [(a.id, a.title, a.link) for a in result.articles] == [
        ("ts-118@termsheet.example#1", "Halberd Security buys Pinecrest Labs",
         "https://termsheet.example/118/halberd"),
        ("ts-118@termsheet.example#2", "Ostrava Rail wins €1.1bn signalling contract",
         "https://termsheet.example/118/ostrava"),
        ("ts-118@termsheet.example#3", "Menlo Grain raises prices again", None),
    ]
    halberd, ostrava, menlo = result.articles
    assert halberd.text == ("Halberd Security agreed to buy the identity start-up Pinecrest "
                            "Labs for €640m in cash and stock, its largest deal since listing "
                            "in Frankfurt.")
    assert ostrava.text == (
        "The Czech operator awarded Ostrava Rail a ten-year contract to replace signalling on "
        "1,200 km of track.\n\nAnalysts at Brnenská Banka said the win doubles its order book; "
        "full story.")
    assert menlo.text.endswith("citing café and bakery demand.")
    everything = " ".join(a.title + " " + a.text for a in result.articles)
    assert "Good morning" not in everything and "Preheader" not in everything
    assert "This week:" not in everything  # the hidden preheader
    assert all(a.date_published == datetime(2024, 6, 18, 4, 30, tzinfo=UTC)
               and a.source == "termsheet" for a in result.articles)


def test_heading_without_text_is_skipped_and_counted():
    message = EmailMessage()
    message["Subject"] = "Digest"
    message["Date"] = "Wed, 19 Jun 2024 08:00:00 +0000"
    message.set_content("<h1>Weekly digest</h1><h2>Item one</h2><p>Text one.</p>",
                        subtype="html")
    result = read_eml(message.as_bytes(), "digest")
    assert [(a.title, a.text) for a in result.articles] == [("Item one", "Text one.")]
    assert result.skipped == 1 and "'Weekly digest'" in result.problems[0]
    # No Message-ID: a content hash identifies the item.
    assert result.articles[0].id.startswith("digest-") and len(result.articles[0].id) == 23


def test_eml_file_and_bytes_give_the_same_articles():
    path = FIXTURES / "unknown_charset.eml"
    assert read_eml(path, "delta").articles == read_eml(path.read_bytes(), "delta").articles


def test_unknown_charset_is_decoded_with_replacement_characters():
    result = read_eml(FIXTURES / "unknown_charset.eml", "delta")
    (note,) = result.articles
    assert note.title == "Delta Desk morning note"
    assert note.text.startswith("Good morning.\n\nOffshore developer Windmark agreed a \ufffd2bn")
    assert "the caf\ufffd chain Brioche Dor\ufffde is exploring a sale." in note.text
    assert note.link == "https://deltadesk.example/notes/20240610"
    assert note.date_published == datetime(2024, 6, 10, 5, 45, tzinfo=UTC)
    assert result.skipped == 0
    assert len(result.problems) == 1 and "'x-unknown'" in result.problems[0]


def test_email_without_items_yields_nothing_and_says_so():
    result = read_eml(FIXTURES / "no_items.eml", "glint")
    assert result.articles == [] and result.skipped == 0
    assert len(result.problems) == 1 and "no items" in result.problems[0]


def test_mbox_plain_base64_latin1_and_quoted_printable_messages():
    result = read_mbox(FIXTURES / "digest.mbox", "inbox")
    assert [(a.id, a.title, a.date_published) for a in result.articles] == [
        ("fw-2024-24@fenwick.example#1", "Fenwick Weekly: the rate-cut trade",
         datetime(2024, 6, 14, 21, 30, tzinfo=UTC)),
        ("al-5521@alpine-ledger.example#1", "Alpine Ledger – Kurzmeldung",
         datetime(2024, 6, 15, 6, 0, tzinfo=UTC)),
        ("seedline-77@seedline.example#1", "Quillon raises $12m seed", None),
        ("seedline-77@seedline.example#2", "Marlpit closes €8m Series A", None),
    ]
    fenwick, alpine, quillon, marlpit = result.articles
    assert fenwick.text.startswith("This week: regional banks rallied 6%")
    assert fenwick.link == "https://fenwick.example/issues/2024-24"
    # base64-encoded ISO-8859-1 HTML without headings: one item titled by the Subject.
    assert alpine.text == ("Die Zürcher Brauerei Hürlimann-Erben prüft einen Börsengang im "
                           "Herbst; die Bewertung läge bei rund 600 Mio. Franken.\n\nWeiterlesen")
    assert alpine.link == "https://alpine-ledger.example/k/5521"
    assert quillon.link == "https://seedline.example/r/quillon"
    assert marlpit.text == "Marlpit’s soil-sensor business closed an €8m Series A; details."
    assert result.skipped == 0
    assert result.problems == ["%s message 3: unparseable Date header 'Sunday morning, mid "
                               "June'; date_published left empty" % (FIXTURES / "digest.mbox")]


# --------------------------------------------------------------------------- records


def test_jsonl_malformed_line_is_skipped_and_the_rest_kept():
    path = FIXTURES / "records.jsonl"
    result = read_jsonl(path, "seed")
    assert [a.id for a in result.articles] == [5101, 5102, 5104, "mkt-5105"]
    assert result.skipped == 1
    assert len(result.problems) == 1 and result.problems[0].startswith(f"{path}:3: skipped")
    verdant = result.articles[0]
    assert verdant.growth["data centers"].five_years == 2.1 and verdant.signal == 1
    assert verdant.source == "seed"
    # The contract's datetime | date union reads a bare ISO date as midnight.
    assert result.articles[2].date_published == datetime(2024, 5, 3)
    assert result.articles[3].source == "wire-archive"  # a record's own source wins


def test_jsonl_invalid_records_are_skipped_with_line_numbers(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"id": 1, "title": "ok"}\n'
                     b'["not", "an", "object"]\n'
                     b'{"id": 3, "signal": 2}\n'
                     b'{"id": 4, "title": "caf\xe9"}\n'
                     b'{"id": 5, "title": "also ok"}\n')
    result = read_jsonl(path, "seed")
    assert [a.id for a in result.articles] == [1, 5]
    assert result.skipped == 3
    assert [p.split(": skipped")[0] for p in result.problems] == [
        f"{path}:2", f"{path}:3", f"{path}:4"]
    assert "signal" in result.problems[1]


def test_json_array_gives_the_same_articles_as_the_jsonl_of_its_records(tmp_path):
    """The dataset as usually shipped (one JSON array) reads exactly like its JSONL."""
    jsonl = FIXTURES / "records.jsonl"
    good_lines = [line for line in jsonl.read_text().splitlines()
                  if line.strip() and line.lstrip().startswith("{") and line.rstrip().endswith("}")]
    records = []
    for line in good_lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pass
    array = tmp_path / "records.json"
    array.write_text(json.dumps(records, indent=2))
    from_array = read_json_array(array, "seed")
    from_jsonl = read_jsonl(jsonl, "seed")
    assert from_array.skipped == 0 and from_array.problems == []
    assert [a.to_record() for a in from_array.articles] == [
        a.to_record() for a in from_jsonl.articles]
    assert from_array.articles[0].growth["data centers"].five_years == 2.1


def test_json_array_skips_invalid_records_by_index(tmp_path):
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps([
        {"id": 1, "title": "ok"},
        ["not", "an", "object"],
        {"id": 3, "title": "bad label", "signal": 2},
        {"id": 5, "text": "body only is fine"},
    ]))
    result = read_json_array(path, "seed")
    assert [a.id for a in result.articles] == [1, 5]
    assert result.skipped == 2
    assert [p.split(": skipped")[0] for p in result.problems] == [f"{path}[1]", f"{path}[2]"]
    assert "signal" in result.problems[1]


def test_articles_the_api_refuses_are_dropped_counted_and_explained(tmp_path):
    jsonl = tmp_path / "empty.jsonl"
    jsonl.write_text('{"id": 1, "title": "kept"}\n{"id": 2, "title": "", "text": " "}\n'
                     '{"id": 3, "text": "body only is fine"}\n')
    result = drop_unclassifiable(read_jsonl(jsonl, "seed"), "empty.jsonl")
    assert [a.id for a in result.articles] == [1, 3] and result.skipped == 1
    assert result.problems == ["empty.jsonl: skipped (article 2 is empty: "
                               "it has neither title nor text)"]
    # Both APIs answer an empty article by the same rule, with the same reason.
    assert Article.model_validate({"id": 2, "title": "", "text": " "}).content_problem() == \
        "article 2 is empty: it has neither title nor text"


def test_truncated_json_array_keeps_the_elements_before_the_break(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text(json.dumps([{"id": i, "title": f"t{i}"} for i in range(3)])[:-12])
    result = read_json_array(path, "seed")
    assert [a.id for a in result.articles] == [0, 1]
    assert result.skipped == 1
    assert result.problems[0].startswith(f"{path}: JSON breaks off after element [1]")


def test_a_json_object_file_is_not_an_array_and_yields_nothing(tmp_path):
    path = tmp_path / "object.json"
    path.write_text('{"id": 1, "title": "one record, not an array"}')
    result = read_json_array(path, "seed")
    assert result.articles == [] and len(result.problems) == 1
    assert "not a JSON array of records" in result.problems[0]


def test_json_array_reader_is_streamed_not_loaded(tmp_path):
    """35,000 articles of ~1 KB: taking the first article must not read the file, and
    reading it all one article at a time must stay far below the file's size."""
    path = tmp_path / "big.json"
    body = "word " * 200
    with open(path, "w") as handle:
        handle.write("[")
        for i in range(35_000):
            handle.write(("," if i else "") + json.dumps(
                {"id": i, "title": f"headline {i}", "text": body, "topics": ["a", "b"]}))
        handle.write("]")
    size = path.stat().st_size
    assert size > 35_000_000
    result = ReadResult()
    tracemalloc.start()
    try:
        articles = iter_json_array(path, "big", result)
        first = next(articles)
        after_first, _ = tracemalloc.get_traced_memory()
        count = 1 + sum(1 for _ in articles)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert first.id == 0 and count == 35_000 and result.skipped == 0
    # Measured: ~0.1 MB after the first article and a ~0.2 MB peak over the whole file;
    # json.load of the file would need several times its 36 MB.
    assert after_first < 2_000_000, after_first
    assert peak < size / 20, (peak, size)


def test_csv_records_with_typed_cells_and_a_bad_row():
    path = FIXTURES / "records.csv"
    result = read_csv(path, "sheet")
    brisk, talbot, quorra = result.articles
    assert (brisk.id, brisk.gpt_signal, brisk.signal, brisk.topics) == (
        "6201", 1, 1, ["payments", "ipo"])
    assert brisk.growth["payments"].ten_years == 3.1
    assert brisk.date_published == datetime(2024, 5, 6, 7, 30)
    assert (talbot.topics, talbot.link, talbot.date_published) == (
        ["textiles", "manufacturing"], None, datetime(2024, 5, 6))
    assert quorra.title == "Quorra Bio, Inc. doubles trial enrolment"
    assert quorra.text == ("Quorra Bio said enrolment in its phase 2 trial doubled\n"
                           "after a protocol change.")
    assert quorra.signal is None and quorra.date_published is None
    assert all(a.source == "sheet" for a in result.articles)
    assert result.skipped == 1
    assert len(result.problems) == 1 and result.problems[0].startswith(f"{path}:4: skipped")
