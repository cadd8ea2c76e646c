"""Sources: turn feeds, e-mail newsletters and record files into contract articles.

Four kinds of input reach the pipeline, and each reader here yields
:class:`~pipeline.article.Article` objects with plain-text bodies:

* **Feeds** (RSS 0.9x / 1.0 / 2.0, Atom): fetched with ``httpx`` so timeouts and HTTP
  errors are explicit (:class:`FeedError`), parsed with ``feedparser``, which knows the
  formats' many dialects and their character-encoding rules.
* **E-mail newsletters** (``.eml`` files, ``mbox`` folders): the stdlib ``email``
  package with the modern policy; an HTML newsletter is split into one item per
  ``h1``/``h2``/``h3`` heading, since one message usually carries several stories.
* **Records** of the original dataset's format as JSONL, CSV, or one JSON array (how
  such a dataset is usually shipped; read streamed with ``ijson``, so a 35,000-article
  file is never held in memory as text and as articles at once).

Real inputs are messy, and one bad item must never stop a run nor lose the others:
each reader skips what it cannot use, logs why, and returns a :class:`ReadResult`
whose ``skipped`` and ``problems`` let the caller count and report. Only failures that
leave nothing to read (a feed URL that errors or times out) raise.

Dates are normalised to timezone-aware UTC datetimes, so articles from different
sources sort and split consistently.
"""

from __future__ import annotations

import csv
import email
import email.policy
import io
import json
import logging
import mailbox
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urljoin

import feedparser
import httpx
import ijson
import lxml.html
from lxml import etree
from pydantic import ValidationError

from pipeline.article import Article
from pipeline.dedupe import hash_title_and_text

log = logging.getLogger(__name__)

USER_AGENT = "newsletter-signals/0.1 (+feed reader)"
FEED_ACCEPT = ("application/rss+xml, application/atom+xml, application/rdf+xml, "
               "application/xml;q=0.9, text/xml;q=0.9, */*;q=0.5")
DEFAULT_FEED_TIMEOUT_S = 10.0
ITEM_HEADINGS = frozenset({"h1", "h2", "h3"})
"""Headings that start a new item when an HTML newsletter is split."""


# --------------------------------------------------------------------------- results


@dataclass
class ReadResult:
    """What one reader call produced."""

    articles: list[Article] = field(default_factory=list)
    skipped: int = 0
    """Items seen but not turned into articles (each has a line in ``problems``)."""
    problems: list[str] = field(default_factory=list)
    """Human-readable reasons: skipped items, and kept items with a defect (no date,
    replaced characters, a malformed feed)."""

    def note(self, problem: str, *, skipped: bool = False, level: int = logging.WARNING) -> None:
        """Record (and log) a problem; ``skipped`` when it cost an item."""
        log.log(level, problem)
        self.problems.append(problem)
        if skipped:
            self.skipped += 1


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


class FeedError(Exception):
    """A feed could not be fetched at all: HTTP error status, timeout, connection error."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"feed {url}: {reason}")
        self.url = url
        self.reason = reason


# --------------------------------------------------------------------------- HTML → text

# Elements that separate paragraphs, and those that only break a line.
_PARAGRAPH_TAGS = frozenset({
    "address", "article", "aside", "blockquote", "body", "caption", "center", "dd",
    "details", "dialog", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer",
    "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "main", "nav", "ol", "p",
    "pre", "section", "summary", "table", "tbody", "tfoot", "thead", "ul",
})
_LINE_TAGS = frozenset({"br", "li", "tr", "td", "th"})
# Never readable text. <head> holds the document <title>, which is not body content.
_DROPPED_TAGS = ("script", "style", "noscript", "template", "head", "iframe", "object", "svg")
# Newsletters hide a "preheader" teaser with CSS; it repeats the body.
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.I)
# Invisible characters newsletters pad preheaders with, and stray control characters.
_INVISIBLE = re.compile(
    r"[\u200b\u200c\u200d\u2060\ufeff\u034f\u00ad\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_BLANK_LINES = re.compile(r"\n{3,}")
_WHITESPACE = re.compile(r"\s+")
_URL = re.compile(r"https?://[^\s<>\"']+")


def normalise_whitespace(text: str) -> str:
    """Plain text with spaces collapsed within lines and at most one blank line between
    paragraphs; invisible padding characters removed."""
    lines = (" ".join(line.split()) for line in _INVISIBLE.sub("", text).splitlines())
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


@dataclass
class HtmlSection:
    """A run of an HTML document: the heading that opened it (``None`` for the part
    before the first heading), its text, and the first web link inside it."""

    heading: str | None
    text: str
    link: str | None


class _SectionBuilder:
    def __init__(self) -> None:
        self.heading_parts: list[str] | None = None
        self.body_parts: list[str] = []
        self.link: str | None = None

    def section(self) -> HtmlSection:
        heading = None
        if self.heading_parts is not None:
            heading = " ".join(normalise_whitespace("".join(self.heading_parts)).split())
        return HtmlSection(heading, normalise_whitespace("".join(self.body_parts)), self.link)


def _parse_html(html: str) -> etree._Element | None:
    if not html or not html.strip():
        return None
    # Feeding UTF-8 bytes with the encoding fixed stops a stale <meta charset> or XML
    # declaration in an already-decoded string from re-decoding it.
    parser = lxml.html.HTMLParser(encoding="utf-8", remove_comments=True, remove_pis=True)
    try:
        root = lxml.html.document_fromstring(html.encode("utf-8", "replace"), parser=parser)
    except etree.ParserError:  # nothing but comments or whitespace
        return None
    etree.strip_elements(root, *_DROPPED_TAGS, with_tail=False)
    for hidden in root.xpath("//*[@hidden or @style]"):
        if hidden.get("hidden") is not None or _HIDDEN_STYLE.search(hidden.get("style", "")):
            hidden.drop_tree()  # keeps the tail text, which is visible
    return root


def html_sections(html: str, split_at: frozenset[str] = ITEM_HEADINGS) -> list[HtmlSection]:
    """Split an HTML document at every heading in ``split_at``, in document order.

    A heading starts a section wherever it sits (newsletter layouts nest them in
    tables); the text before the first heading, if any, is a section with
    ``heading=None``. With an empty ``split_at`` the whole document is one section.
    """
    root = _parse_html(html)
    if root is None:
        return []
    sections = [_SectionBuilder()]
    in_heading = False
    pre_depth = 0

    def emit(text: str | None) -> None:
        if not text:
            return
        if not pre_depth:
            text = _WHITESPACE.sub(" ", text)
        current = sections[-1]
        (current.heading_parts if in_heading else current.body_parts).append(text)

    def emit_break(separator: str) -> None:
        if not in_heading:
            sections[-1].body_parts.append(separator)

    for event, element in etree.iterwalk(root, events=("start", "end")):
        tag = element.tag if isinstance(element.tag, str) else ""
        if event == "start":
            if tag in split_at:
                sections.append(_SectionBuilder())
                sections[-1].heading_parts = []
                in_heading = True
            elif tag in _PARAGRAPH_TAGS:
                emit_break("\n\n")
            elif tag in _LINE_TAGS:
                emit_break("\n")
            if tag == "pre":
                pre_depth += 1
            if tag == "a" and sections[-1].link is None:
                href = (element.get("href") or "").strip()
                if href.startswith(("http://", "https://")):
                    sections[-1].link = href
            emit(element.text)
        else:
            if tag in split_at:
                in_heading = False
            elif tag in _PARAGRAPH_TAGS:
                emit_break("\n\n")
            if tag == "pre":
                pre_depth -= 1
            emit(element.tail)

    built = [builder.section() for builder in sections]
    # The implicit first section is only real when something came before a heading.
    if len(built) > 1 and not built[0].text:
        built = built[1:]
    return built


def html_to_text(html: str) -> str:
    """Readable plain text of an HTML document or fragment.

    Scripts, styles and hidden elements are dropped, entities unescaped (by the
    parser), block elements become paragraph breaks and ``<br>``/list items line
    breaks, and whitespace is collapsed.
    """
    sections = html_sections(html, split_at=frozenset())
    return sections[0].text if sections else ""


# --------------------------------------------------------------------------- feeds


def fetch_feed(url: str, timeout_s: float = DEFAULT_FEED_TIMEOUT_S,
               client: httpx.Client | None = None) -> httpx.Response:
    """GET a feed; any failure to get a 2xx/3xx answer raises :class:`FeedError`."""
    headers = {"User-Agent": USER_AGENT, "Accept": FEED_ACCEPT}
    try:
        if client is not None:
            response = client.get(url, headers=headers, timeout=timeout_s, follow_redirects=True)
        else:
            with httpx.Client(timeout=timeout_s, follow_redirects=True) as own_client:
                response = own_client.get(url, headers=headers)
    except httpx.TimeoutException as exc:
        raise FeedError(url, f"timed out after {timeout_s:g} s ({type(exc).__name__})") from exc
    except httpx.UnsupportedProtocol as exc:
        raise FeedError(url, f"invalid URL ({exc})") from exc
    except httpx.TransportError as exc:
        raise FeedError(url, f"connection failed ({type(exc).__name__}: {exc})") from exc
    except httpx.RequestError as exc:  # too many redirects, undecodable body
        raise FeedError(url, f"request failed ({type(exc).__name__}: {exc})") from exc
    except httpx.InvalidURL as exc:
        raise FeedError(url, f"invalid URL ({exc})") from exc
    if response.status_code >= 400:
        raise FeedError(url, f"HTTP {response.status_code} {response.reason_phrase}")
    return response


def read_feed(
    url_or_bytes: str | bytes,
    source: str,
    timeout_s: float = DEFAULT_FEED_TIMEOUT_S,
    client: httpx.Client | None = None,
) -> FeedResult:
    """The articles of an RSS or Atom feed, fetched from a URL or given as bytes.

    Raises :class:`FeedError` when a URL cannot be fetched. A feed that is not
    well-formed does not raise: the entries a tolerant parse recovered are returned,
    with ``malformed`` set.
    """
    if isinstance(url_or_bytes, bytes):
        return parse_feed(url_or_bytes, source)
    response = fetch_feed(url_or_bytes, timeout_s, client)
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


# --------------------------------------------------------------------------- e-mail


def read_eml(path_or_bytes: str | Path | bytes, source: str) -> ReadResult:
    """The items of one e-mail (an ``.eml`` file or its raw bytes)."""
    if isinstance(path_or_bytes, bytes):
        raw, label = path_or_bytes, "e-mail"
    else:
        raw, label = Path(path_or_bytes).read_bytes(), str(path_or_bytes)
    message = email.message_from_bytes(raw, policy=email.policy.default)
    result = ReadResult()
    _read_message(message, source, label, result)
    return result


def read_message_bytes(raw: bytes, source: str, label: str = "e-mail",
                       result: ReadResult | None = None) -> ReadResult:
    """The items of one RFC 822 message given as raw bytes (an IMAP ``FETCH BODY[]``,
    a queue payload), parsed exactly like an ``.eml`` file.

    The items and problems are appended to ``result`` when one is given (so a caller
    reading many messages keeps one count), else to a new one. A message the email
    package cannot read is skipped and counted, as in :func:`read_mbox`.
    """
    result = result if result is not None else ReadResult()
    try:
        message = email.message_from_bytes(raw, policy=email.policy.default)
        _read_message(message, source, label, result)
    # Same reason as in read_mbox: hostile input raises assorted exception types.
    except Exception as exc:  # noqa: BLE001
        result.note(f"{label}: unreadable ({type(exc).__name__}: {exc}); skipped",
                    skipped=True)
    return result


def read_mbox(path: str | Path, source: str) -> ReadResult:
    """The items of every message in an mbox file; a message that cannot be read is
    skipped and counted, the others are kept."""
    result = ReadResult()
    box = mailbox.mbox(path, create=False)
    try:
        for position, key in enumerate(box.iterkeys(), 1):
            label = f"{path} message {position}"
            try:
                message = email.message_from_bytes(box.get_bytes(key),
                                                   policy=email.policy.default)
                _read_message(message, source, label, result)
            # The email package raises assorted exception types on hostile input; one
            # such message must not cost the rest of the mailbox.
            except Exception as exc:  # noqa: BLE001
                result.note(f"{label}: unreadable ({type(exc).__name__}: {exc}); skipped",
                            skipped=True)
    finally:
        box.close()
    log.info("%s: %d articles, %d skipped, %d problems", path, len(result.articles),
             result.skipped, len(result.problems))
    return result


def _header_text(message: EmailMessage, name: str, label: str, result: ReadResult) -> str:
    try:
        value = message.get(name)
    except (ValueError, TypeError, IndexError, LookupError) as exc:
        result.note(f"{label}: unreadable {name} header ({exc})")
        return ""
    return " ".join(str(value).split()) if value is not None else ""


def _header_date(message: EmailMessage, label: str, result: ReadResult) -> datetime | None:
    try:
        header = message.get("Date")
    except (ValueError, TypeError, IndexError) as exc:
        result.note(f"{label}: unreadable Date header ({exc}); date_published left empty")
        return None
    if header is None:
        result.note(f"{label}: no Date header; date_published left empty")
        return None
    published = getattr(header, "datetime", None)
    if published is None:
        result.note(f"{label}: unparseable Date header {str(header)!r}; "
                    "date_published left empty")
        return None
    # RFC 5322's "-0000" (zone unknown) parses as naive; UTC is the only sane reading.
    if published.tzinfo is None:
        return published.replace(tzinfo=timezone.utc)
    return published.astimezone(timezone.utc)


def _part_text(part: EmailMessage, label: str, result: ReadResult) -> str:
    """A text part decoded: transfer encoding undone, declared charset applied."""
    try:
        return part.get_content()  # replaces undecodable bytes of a known charset
    except LookupError:
        charset = part.get_content_charset()
        payload = part.get_payload(decode=True) or b""
        result.note(f"{label}: unknown charset {charset!r}; decoded as UTF-8 with "
                    "replacement characters")
        return payload.decode("utf-8", errors="replace")


def _read_message(message: EmailMessage, source: str, label: str, result: ReadResult) -> None:
    """Append the items of one message to ``result``.

    The HTML body is preferred (newsletters put their structure there). With headings,
    each ``h1``-``h3`` starts an item and everything up to the next heading is its text,
    so a footer after the last story ends up in the last item; text before the first
    heading (greeting, "view in browser") belongs to no item.
    """
    subject = _header_text(message, "Subject", label, result)
    message_id = _header_text(message, "Message-ID", label, result).strip("<>")
    published = _header_date(message, label, result)
    body = message.get_body(preferencelist=("html", "plain"))
    if body is None:
        result.note(f"{label}: no text or HTML body; no items")
        return
    content = _part_text(body, label, result)

    items: list[tuple[str, str, str | None]] = []
    if body.get_content_subtype() == "html":
        sections = html_sections(content)
        if any(s.heading is not None for s in sections):
            for section in sections:
                if section.heading is None:
                    continue  # the greeting / "view in browser" part before the first item
                if not section.text:
                    result.note(f"{label}: heading {section.heading!r} has no text under it "
                                "(a section title, not an item); skipped",
                                skipped=True, level=logging.INFO)
                    continue
                items.append((section.heading, section.text, section.link))
        elif sections and sections[0].text:  # no headings: one section, one item
            items.append((subject, sections[0].text, sections[0].link))
    else:
        text = normalise_whitespace(content)
        if text:
            url = _URL.search(text)
            items.append((subject, text, url.group(0) if url else None))

    if not items:
        result.note(f"{label}: message {subject!r} has no text; no items")
        return
    for position, (title, text, link) in enumerate(items, 1):
        item_id = (f"{message_id}#{position}" if message_id
                   else f"{source}-{hash_title_and_text(title, text)[:16]}")
        result.articles.append(Article(id=item_id, title=title, text=text, link=link,
                                       date_published=published, source=source))


# --------------------------------------------------------------------------- records


def _record_article(record: Any, source: str) -> Article:
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if "source" not in record:
        record = {**record, "source": source}
    return Article.from_record(record)


def drop_unclassifiable(result: ReadResult, label: str) -> ReadResult:
    """Skip (count and explain) the articles the HTTP APIs would refuse, by the one
    rule they share (:meth:`Article.content_problem`): an importer's output then holds
    only articles the product can classify. ``label`` names the input in the problems.
    (A dataset build applies the same rule in its normalise stage, counted there as
    ``empty_skipped``.)"""
    kept = []
    for article in result.articles:
        problem = article.content_problem()
        if problem is None:
            kept.append(article)
        else:
            result.note(f"{label}: skipped ({problem})", skipped=True)
    result.articles = kept
    return result


def read_jsonl(path: str | Path, source: str) -> ReadResult:
    """Articles from a JSONL file of records in the original dataset's format.

    ``source`` is set on records that do not name one. A line that is not valid UTF-8,
    not JSON, or not a valid record is skipped with its line number.
    """
    result = ReadResult()
    with open(path, "rb") as handle:
        for line_number, raw_line in enumerate(handle, 1):
            if not raw_line.strip():
                continue
            try:
                record = json.loads(raw_line.decode("utf-8"))
                result.articles.append(_record_article(record, source))
            # Bad UTF-8, bad JSON and an invalid record are all ValueErrors.
            except ValueError as exc:
                result.note(f"{path}:{line_number}: skipped ({_short_error(exc)})",
                            skipped=True)
    log.info("%s: %d articles, %d skipped", path, len(result.articles), result.skipped)
    return result


def iter_json_array(path: str | Path, source: str, result: ReadResult) -> Iterator[Article]:
    """Articles from a file holding one JSON array of records, yielded one at a time.

    The file is parsed incrementally (``ijson``), so only the current record is in
    memory. An element that is not a valid record is skipped and noted in ``result``
    with its position (``[index]``, 0-based). JSON that breaks off (truncated or
    malformed) ends the read with a noted problem; the records before the break are kept.
    A file whose top level is not an array yields nothing and says so.
    """
    with open(path, "rb") as handle:
        first = handle.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
        if not first.startswith(b"["):
            result.note(f"{path}: not a JSON array of records (it starts with "
                        f"{first[:16]!r}); nothing read")
            return
        handle.seek(0)
        index = -1
        # use_float: numbers as float, not Decimal (pydantic accepts both; floats are
        # what json.loads gives the JSONL reader, so both readers build equal articles).
        elements = ijson.items(handle, "item", use_float=True)
        while True:
            try:
                record = next(elements)
            except StopIteration:
                return
            except (ijson.JSONError, UnicodeDecodeError) as exc:
                result.note(f"{path}: JSON breaks off after element [{index}] "
                            f"({_short_error(exc)}); the rest of the file is not read",
                            skipped=True)
                return
            index += 1
            try:
                yield _record_article(record, source)
            except ValueError as exc:
                result.note(f"{path}[{index}]: skipped ({_short_error(exc)})", skipped=True)


def read_json_array(path: str | Path, source: str) -> ReadResult:
    """Articles from a JSON array file of records in the original dataset's format
    (see :func:`iter_json_array`); ``source`` is set on records that do not name one."""
    result = ReadResult()
    result.articles.extend(iter_json_array(path, source, result))
    log.info("%s: %d articles, %d skipped", path, len(result.articles), result.skipped)
    return result


_CSV_LABELS = ("gpt_signal", "signal")


def _csv_record(row: dict[str, str | None]) -> dict[str, Any]:
    """A CSV row as a record: empty cells left out, labels as ints, ``topics`` as a JSON
    list or ``;``-separated, ``growth`` as a JSON object."""
    if None in row:
        raise ValueError("more cells than header columns")
    record: dict[str, Any] = {}
    for name, cell in row.items():
        if cell is None or cell.strip() == "":
            continue
        if name in _CSV_LABELS:
            record[name] = int(cell)
        elif name == "topics":
            record[name] = (json.loads(cell) if cell.lstrip().startswith("[")
                            else [t.strip() for t in cell.split(";") if t.strip()])
        elif name == "growth":
            record[name] = json.loads(cell)
        else:
            record[name] = cell
    return record


def read_csv(path: str | Path, source: str) -> ReadResult:
    """Articles from a CSV file whose header names record fields (``id``, ``title``,
    ``date_published``, ``text``, ...). A row that is not a valid record is skipped with
    its line number."""
    result = ReadResult()
    data = Path(path).read_bytes()
    # utf-8-sig: spreadsheet exports start with a byte-order mark.
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        content = data.decode("utf-8-sig", errors="replace")
        result.note(f"{path}: not valid UTF-8 ({exc}); undecodable bytes replaced")
    reader = csv.DictReader(io.StringIO(content, newline=""))
    for row in reader:
        try:
            result.articles.append(_record_article(_csv_record(row), source))
        except ValueError as exc:  # includes bad JSON cells and invalid records
            result.note(f"{path}:{reader.line_num}: skipped ({_short_error(exc)})",
                        skipped=True)
    log.info("%s: %d articles, %d skipped", path, len(result.articles), result.skipped)
    return result


def _short_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "record"
        return f"invalid {where}: {first['msg']}"
    return f"{type(exc).__name__}: {exc}"
