"""RSS 0.9x / 1.0 / 2.0 and Atom feeds: fetched with ``httpx`` (explicit timeouts and HTTP
errors: :class:`FeedError`), parsed with ``feedparser`` into a :class:`FeedResult`.

A fetch is bounded: the whole answer (redirects included) within ``timeout_s`` of wall
time however slowly it drips, at most ``max_bytes`` after decompression (a compressed
bomb stops there), and it connects only where the address policy admits
(:mod:`pipeline.egress`: global addresses, plus ``allow_networks``), on every redirect hop.
A 429 or 503 answer's ``Retry-After`` (:mod:`pipeline.politeness`, as the link and trends
stages read it) travels on the :class:`FeedError`, so a poller can wait what it asks.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal
from urllib.parse import urljoin

import feedparser
import httpx

from pipeline.article import Article
from pipeline.dedupe import hash_title_and_text
from pipeline.egress import AddressPolicy, BlockedAddress, policy_transport
from pipeline.fetch_limits import BodyCut, read_bounded
from pipeline.html_text import html_to_text, normalise_whitespace
from pipeline.politeness import retry_after_seconds
from pipeline.sources import ReadResult

log = logging.getLogger(__name__)

USER_AGENT = "newsletter-signals/0.1 (+feed reader)"
FEED_ACCEPT = ("application/rss+xml, application/atom+xml, application/rdf+xml, "
               "application/xml;q=0.9, text/xml;q=0.9, */*;q=0.5")
DEFAULT_FEED_TIMEOUT_S = 10.0
MAX_FEED_BYTES = 20_000_000
"""The most a feed may decompress to."""
MAX_FEED_REDIRECTS = 5


@dataclass(frozen=True)
class FeedAnswer:
    """A feed's body as fetched: the bytes, the final URL, the HTTP charset."""

    content: bytes
    url: str
    charset_encoding: str | None


@dataclass
class FeedResult(ReadResult):
    """A feed's articles plus what the feed said about itself."""

    url: str | None = None
    feed_title: str = ""
    feed_format: str = ""
    """feedparser's name for the format, e.g. ``rss20``, ``rss10``, ``rss091u``, ``atom10``."""
    malformed: bool = False
    """The XML was not well-formed (truncated, garbage): the articles are what a
    tolerant parse recovered."""


FeedErrorKind = Literal["http_status", "too_large", "timeout", "blocked_address",
                        "invalid_url", "connection"]
"""Why a feed could not be fetched, as data (the ingestion metrics' ``kind`` label)."""


class FeedError(Exception):
    """A feed could not be fetched at all: HTTP error status, timeout, connection error."""

    def __init__(self, url: str, reason: str, kind: FeedErrorKind = "connection",
                 retry_after_s: float | None = None) -> None:
        super().__init__(f"feed {url}: {reason}")
        self.url = url
        self.reason = reason
        self.kind: FeedErrorKind = kind
        self.retry_after_s = retry_after_s
        """What a 429 or 503 answer's ``Retry-After`` asked, in seconds; None: nothing."""


def fetch_feed(url: str, timeout_s: float = DEFAULT_FEED_TIMEOUT_S,
               allow_networks: Sequence[str] = (),
               max_bytes: int = MAX_FEED_BYTES) -> FeedAnswer:
    """GET a feed (see the module docstring for its bounds); any failure to get a
    complete 2xx answer raises :class:`FeedError`. Every connection, each redirect hop
    included, goes through the address policy: there is no way to pass a client of
    one's own that would bypass it."""
    headers = {"User-Agent": USER_AGENT, "Accept": FEED_ACCEPT}
    deadline = time.monotonic() + timeout_s
    policy = AddressPolicy.allowing(allow_networks)
    client = httpx.Client(transport=policy_transport(policy), timeout=timeout_s,
                          follow_redirects=True, max_redirects=MAX_FEED_REDIRECTS)
    try:
        with client.stream("GET", url, headers=headers, timeout=timeout_s,
                           follow_redirects=True) as response:
            if response.status_code >= 400:
                wait = (retry_after_seconds(response.headers.get("retry-after"))
                        if response.status_code in (429, 503) else None)
                raise FeedError(url, f"HTTP {response.status_code} {response.reason_phrase}"
                                + (f" (Retry-After: {wait:g} s)" if wait is not None else ""),
                                "http_status", retry_after_s=wait)
            try:
                body = read_bounded(response, max_bytes, deadline)
            except BodyCut as cut:
                raise FeedError(url, f"more than {max_bytes} bytes after decompression"
                                if cut.kind == "too_large" else
                                f"not complete after {timeout_s:g} s", cut.kind) from None
            return FeedAnswer(body, str(response.url), response.charset_encoding)
    except BlockedAddress as exc:
        raise FeedError(url, f"refused address {exc} (a feed on your own network: "
                        "add it to allow_networks)", "blocked_address") from exc
    except httpx.TimeoutException as exc:
        raise FeedError(url, f"timed out after {timeout_s:g} s ({type(exc).__name__})",
                        "timeout") from exc
    except httpx.UnsupportedProtocol as exc:
        raise FeedError(url, f"invalid URL ({exc})", "invalid_url") from exc
    except httpx.TransportError as exc:
        raise FeedError(url, f"connection failed ({type(exc).__name__}: {exc})") from exc
    except httpx.RequestError as exc:  # too many redirects, undecodable body
        raise FeedError(url, f"request failed ({type(exc).__name__}: {exc})") from exc
    except httpx.InvalidURL as exc:
        raise FeedError(url, f"invalid URL ({exc})", "invalid_url") from exc
    finally:
        client.close()


def read_feed(
    url_or_bytes: str | bytes,
    source: str,
    timeout_s: float = DEFAULT_FEED_TIMEOUT_S,
    allow_networks: Sequence[str] = (),
) -> FeedResult:
    """The articles of an RSS or Atom feed, fetched from a URL or given as bytes.

    Raises :class:`FeedError` when a URL cannot be fetched. A feed that is not
    well-formed does not raise: the entries a tolerant parse recovered are returned,
    with ``malformed`` set.
    """
    if isinstance(url_or_bytes, bytes):
        return parse_feed(url_or_bytes, source)
    response = fetch_feed(url_or_bytes, timeout_s, allow_networks)
    return parse_feed(response.content, source, url=str(response.url),
                      http_charset=response.charset_encoding)


# Closing tags of RSS items and Atom entries, with any namespace prefix.
_ENTRY_END = re.compile(rb"</(?:[A-Za-z_][\w.-]*:)?(?:item|entry)\s*>")


def parse_feed(data: bytes, source: str, url: str | None = None,
               http_charset: str | None = None) -> FeedResult:
    """Parse feed bytes (see :func:`read_feed`); ``url`` resolves relative links."""
    # Only the HTTP charset is passed on: feedparser applies RFC 3023 to the media type,
    # under which a "text/xml" answer without a charset must be read as US-ASCII and
    # its XML prolog ignored, which garbles real-world Latin-1 feeds. Declared as
    # application/xml, the order is HTTP charset, then BOM/prolog, then UTF-8.
    # No Content-Location either: with a base URL feedparser also "resolves" a relative
    # <guid> into a URL, so ids would change with the address the feed was fetched from.
    # Only links are resolved, below.
    headers = {"content-type": "application/xml"
               + (f"; charset={http_charset}" if http_charset else "")}
    parsed = feedparser.parse(data, response_headers=headers)
    label = url or "feed bytes"
    result = FeedResult(url=url, feed_title=parsed.feed.get("title", ""),
                        feed_format=parsed.get("version", ""))
    entries = list(parsed.entries)
    if parsed.bozo:
        problem = parsed.get("bozo_exception")
        if isinstance(problem, feedparser.CharacterEncodingOverride):
            result.note(f"{label}: {problem}", level=logging.INFO)
        else:
            result.malformed = True
            result.note(f"{label}: malformed feed ({type(problem).__name__}: {problem}); "
                        f"{len(entries)} entries recovered")
            # Cut mid-entry, the tolerant parser still returns the entry it was in, with
            # whatever fields came before the cut: drop it rather than keep half a story.
            if entries and len(_ENTRY_END.findall(data)) < len(entries):
                result.note(f"{label}: last entry {len(entries)} is incomplete (feed cut "
                            "off inside it)", skipped=True)
                entries = entries[:-1]
    if not result.feed_format:
        result.note(f"{label}: not a recognised RSS or Atom feed")
    for position, entry in enumerate(entries, 1):
        article = _entry_article(entry, source, url, f"{label} entry {position}", result)
        if article is not None:
            result.articles.append(article)
    log.info("%s: %d articles, %d skipped, %d problems", label, len(result.articles),
             result.skipped, len(result.problems))
    return result


def _detail_text(value: str, content_type: str) -> str:
    if "html" in content_type:
        return html_to_text(value)
    return normalise_whitespace(value)


def _entry_text(entry: Any) -> str:
    """Body text: the fullest HTML content, else the summary."""
    contents = entry.get("content") or []
    html_contents = [c for c in contents if "html" in c.get("type", "")]
    for content in html_contents or contents:
        text = _detail_text(content.get("value", ""), content.get("type", ""))
        if text:
            return text
    summary_type = entry.get("summary_detail", {}).get("type", "text/html")
    return _detail_text(entry.get("summary", ""), summary_type)


def _struct_to_utc(value: time.struct_time) -> datetime:
    # feedparser has already converted the date to UTC.
    return datetime(*value[:6], tzinfo=timezone.utc)


_DATE_KEYS = ("published", "updated", "created")


def _entry_date(entry: Any, label: str, result: ReadResult) -> datetime | None:
    """The first date feedparser could parse, in UTC; else None, with a problem noted."""
    # dict.get, not entry.get: feedparser's own get() maps a missing "updated" to
    # "published" with a DeprecationWarning.
    for key in _DATE_KEYS:
        parsed = dict.get(entry, f"{key}_parsed")
        if parsed:
            try:
                return _struct_to_utc(parsed)
            except (TypeError, ValueError) as exc:
                result.note(f"{label}: impossible {key} date {dict.get(entry, key)!r} ({exc})")
    # A feed may repeat one bad value in several date elements: report each value once.
    raw = list(dict.fromkeys(dict.get(entry, key) for key in _DATE_KEYS
                             if dict.get(entry, key)))
    if raw:
        result.note(f"{label}: unparseable date {' / '.join(map(repr, raw))}; "
                    "date_published left empty")
    else:
        result.note(f"{label}: no date; date_published left empty", level=logging.INFO)
    return None


def _entry_article(entry: Any, source: str, feed_url: str | None, label: str,
                   result: ReadResult) -> Article | None:
    title_type = entry.get("title_detail", {}).get("type", "text/plain")
    title = " ".join(_detail_text(entry.get("title", ""), title_type).split())
    text = _entry_text(entry)
    link = entry.get("link") or None
    if link and feed_url:
        link = urljoin(feed_url, link)
    if not title and not text:
        result.note(f"{label}: no title and no text (link {link!r}); skipped", skipped=True)
        return None
    entry_id = entry.get("id") or link or f"{source}-{hash_title_and_text(title, text)[:16]}"
    return Article(id=entry_id, title=title, text=text, link=link,
                   date_published=_entry_date(entry, label, result), source=source)
