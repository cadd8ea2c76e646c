"""Link sources: items that are only a link, for the link stage (:mod:`pipeline.links`) to fill.

Two shapes arrive:

* **Link lists**, the shape of the original work's data (article URLs from BBC, The
  Guardian, TechCrunch, ... with a date and sometimes a label): CSV with a header, or
  JSONL, one link a row. Columns/keys: ``url`` (or ``link``, required), and optionally
  ``date`` (or ``date_published``/``published``), ``label`` (or ``signal``: 0/1),
  ``title``, ``text`` (a teaser), ``id``. Other columns are ignored. An item without an
  ``id`` is named by its canonical URL (:func:`pipeline.links.url_id`), so the same
  article listed twice, even with different tracking parameters, is one item: later
  copies are skipped and counted.
* **Links inside e-mail newsletters**: every story a newsletter links to becomes an
  item: its headline (the link's text, or the heading above a "Read more" link), the
  teaser around the link, and the link. Links that are not stories (unsubscribe, view
  in browser, preferences, social profiles, ``mailto:``) are left out, and a story
  linked twice (headline and "Read more") is one item.

As in :mod:`pipeline.sources`, a bad row is skipped, logged and counted in the
:class:`~pipeline.sources.ReadResult`; it never stops the file.
"""

from __future__ import annotations

import csv
import email
import email.policy
import io
import json
import logging
import re
from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import Any

import lxml.html
from lxml import etree
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.article import Article, Label
from pipeline.links import canonical_url, url_id
from pipeline.html_text import normalise_whitespace
from pipeline.sources import ReadResult

log = logging.getLogger(__name__)

LINK_LIST_URL_COLUMNS = ("url", "link")


class LinkRecord(BaseModel):
    """One row of a link list."""

    model_config = ConfigDict(extra="ignore")

    url: str = Field(validation_alias=AliasChoices("url", "link"),
                     description="The article's address (http or https).")
    date_published: datetime | None = Field(
        default=None, validation_alias=AliasChoices("date", "date_published", "published"),
        description="Publication date; a bare date is midnight UTC, a naive time is UTC.")
    signal: Label | None = Field(default=None, validation_alias=AliasChoices("label", "signal"),
                                 description="A known label: 1 investment signal, 0 not.")
    title: str = Field(default="", description="Headline, if the list has one.")
    text: str = Field(default="", description="A teaser, if the list has one.")
    id: str | None = Field(default=None, description="The list's own id for the link.")

    @field_validator("url")
    @classmethod
    def _fetchable(cls, url: str) -> str:
        url = url.strip()
        if canonical_url(url) is None:
            raise ValueError(f"not an http(s) URL: {url!r}")
        return url

    @field_validator("signal", mode="before")
    @classmethod
    def _label_from_text(cls, value: Any) -> Any:
        # CSV cells are text; "1"/"0" (and true/false) are what spreadsheets write.
        if isinstance(value, str):
            text = value.strip().lower()
            return {"1": 1, "0": 0, "true": 1, "false": 0, "": None}.get(text, value)
        return value

    @field_validator("date_published", mode="before")
    @classmethod
    def _date_or_datetime(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            if not value:
                return None
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
                return datetime.combine(date.fromisoformat(value), time(), tzinfo=timezone.utc)
        return value

    @field_validator("date_published")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(
            timezone.utc)

    def article(self, source: str) -> Article:
        fields: dict[str, Any] = dict(id=self.id or url_id(self.url), title=self.title,
                                      text=self.text, link=self.url,
                                      date_published=self.date_published, source=source)
        if self.signal is not None:
            fields["signal"] = self.signal
        return Article(**fields)


def is_link_list(path: str | Path) -> bool:
    """Whether a CSV/JSONL file is a link list (a ``url``/``link`` field but no ``id``
    and no ``text``) rather than records of the article format."""
    path = Path(path)
    with open(path, encoding="utf-8-sig", errors="replace") as handle:
        if path.suffix.lower() == ".csv":
            fields = set(next(csv.reader(handle), []))
        else:
            first = next((line for line in handle if line.strip()), "{}")
            try:
                record = json.loads(first)
            except ValueError:
                return False
            fields = set(record) if isinstance(record, dict) else set()
    fields = {f.strip().lower() for f in fields}
    return bool(fields & set(LINK_LIST_URL_COLUMNS)) and not fields & {"id", "text"}


def read_link_list(path: str | Path, source: str) -> ReadResult:
    """A link list as items (text empty or a teaser), by file suffix: ``.csv`` or JSONL."""
    path = Path(path)
    rows = _csv_rows(path) if path.suffix.lower() == ".csv" else _jsonl_rows(path)
    result = ReadResult()
    seen: dict[str, str] = {}
    for where, row in rows:
        if isinstance(row, Exception):
            result.note(f"{path}:{where}: skipped ({row})", skipped=True)
            continue
        try:
            record = LinkRecord.model_validate(row)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "row"
            result.note(f"{path}:{where}: skipped (invalid {field}: {first['msg']})",
                        skipped=True)
            continue
        key = canonical_url(record.url) or record.url
        if key in seen:
            result.note(f"{path}:{where}: skipped (same article as {seen[key]}: {record.url})",
                        skipped=True, level=logging.INFO)
            continue
        seen[key] = f"line {where}"
        result.articles.append(record.article(source))
    log.info("%s: %d links, %d skipped", path, len(result.articles), result.skipped)
    return result


def _csv_rows(path: Path) -> list[tuple[int, dict[str, str] | Exception]]:
    content = path.read_bytes().decode("utf-8-sig", errors="replace")
    reader = csv.DictReader(io.StringIO(content, newline=""))
    reader.fieldnames = [name.strip().lower() for name in reader.fieldnames or []]
    rows: list[tuple[int, dict[str, str] | Exception]] = []
    for row in reader:
        if None in row:
            rows.append((reader.line_num, ValueError("more cells than header columns")))
            continue
        rows.append((reader.line_num, {k: v for k, v in row.items() if v and v.strip()}))
    return rows


def _jsonl_rows(path: Path) -> list[tuple[int, Any]]:
    rows: list[tuple[int, Any]] = []
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except ValueError as exc:
                rows.append((line_number, ValueError(f"not JSON: {exc}")))
                continue
            if not isinstance(row, dict):
                row = ValueError(f"expected a JSON object, got {type(row).__name__}")
            rows.append((line_number, row))
    return rows


# --------------------------------------------------------------------------- e-mail

# Links that belong to the newsletter, not to a story.
_NOT_STORY_TEXT = re.compile(
    r"unsubscribe|view (it |this )?(e-?mail |newsletter )?(in|on) (your |a |the )?(browser|web)"
    r"|manage (your )?(preferences|subscription)|update (your )?preferences|privacy|terms of"
    r"|forward (this|to a friend)|follow us|share on|sign up|subscribe", re.I)
_NOT_STORY_URL = re.compile(
    r"unsubscribe|/preferences|/optout|/opt-out|list-manage\.com/(unsubscribe|profile)"
    r"|//(www\.)?(facebook|twitter|x|linkedin|instagram|youtube|tiktok)\.com", re.I)
_READ_MORE = re.compile(r"^(read|see|continue|full|more)\b.*|.*(read more|full story|→|»)\s*$",
                        re.I)
_HEADINGS = ("h1", "h2", "h3", "h4")
_BLOCKS = ("li", "p", "td", "div", "section", "article", "blockquote")
_TEASER_SIBLINGS = 3


def _text(element: etree._Element) -> str:
    return " ".join(normalise_whitespace(element.text_content()).split())


def _is_story_link(url: str, anchor_text: str) -> bool:
    return (canonical_url(url) is not None and not _NOT_STORY_URL.search(url)
            and not _NOT_STORY_TEXT.search(anchor_text))


def _heading_before(anchor: etree._Element) -> str:
    """The nearest heading (or bold run) before ``anchor`` in document order."""
    for element in anchor.itersiblings(preceding=True):
        if element.tag in _HEADINGS or element.tag in ("strong", "b"):
            return _text(element)
    for element in anchor.iterancestors():
        for sibling in element.itersiblings(preceding=True):
            if not isinstance(sibling.tag, str):
                continue
            if sibling.tag in _HEADINGS or sibling.tag in ("strong", "b"):
                return _text(sibling)
            found = sibling.xpath(".//h1|.//h2|.//h3|.//h4|.//strong|.//b")
            if found:
                return _text(found[-1])
    return ""


def _story_of(anchor: etree._Element) -> tuple[str, str]:
    """(headline, teaser) of the story a link points to, from where the link sits."""
    anchor_text = _text(anchor)
    heading = next((a for a in anchor.iterancestors() if a.tag in _HEADINGS), None)
    if heading is not None:  # a linked headline: the teaser follows it
        teaser = []
        for sibling in heading.itersiblings():
            if not isinstance(sibling.tag, str) or sibling.tag in _HEADINGS:
                break
            if len(teaser) == _TEASER_SIBLINGS:
                break
            teaser.append(_text(sibling))
        return _text(heading), " ".join(t for t in teaser if not _READ_MORE.match(t))
    block = next((a for a in anchor.iterancestors() if a.tag in _BLOCKS), None)
    block_text = _text(block) if block is not None else anchor_text
    if _READ_MORE.match(anchor_text) or len(anchor_text.split()) < 3:
        title = _heading_before(anchor)
        teaser = block_text.replace(anchor_text, "")
        if title:
            teaser = teaser.replace(title, "", 1)
        return title, teaser.strip(" -–—:|")
    return anchor_text, block_text.replace(anchor_text, "", 1).strip(" -–—:|")


def read_newsletter_links(path_or_bytes: str | Path | bytes, source: str) -> ReadResult:
    """One item per story an e-mail newsletter links to (see the module docstring).

    Item ids are ``<Message-ID>#<n>`` (else the link's :func:`~pipeline.links.url_id`);
    every item has the message's date. A plain-text message gives one item per URL,
    titled by the text on its line or the line before it.
    """
    if isinstance(path_or_bytes, bytes):
        raw, label = path_or_bytes, "e-mail"
    else:
        raw, label = Path(path_or_bytes).read_bytes(), str(path_or_bytes)
    result = ReadResult()
    try:
        message = email.message_from_bytes(raw, policy=email.policy.default)
        message_id = str(message.get("Message-ID") or "").strip().strip("<>")
        date_header = message.get("Date")
        published = getattr(date_header, "datetime", None) if date_header else None
        if published is not None:
            published = (published.replace(tzinfo=timezone.utc) if published.tzinfo is None
                         else published.astimezone(timezone.utc))
        body = message.get_body(preferencelist=("html", "plain"))
        content = body.get_content() if body is not None else ""
        subtype = body.get_content_subtype() if body is not None else ""
    # The email package raises assorted types on hostile input; count, don't crash.
    except Exception as exc:  # noqa: BLE001
        result.note(f"{label}: unreadable ({type(exc).__name__}: {exc}); skipped", skipped=True)
        return result
    stories = _html_stories(content) if subtype == "html" else _plain_stories(content)
    seen: set[str] = set()
    for title, teaser, url in stories:
        key = canonical_url(url) or url
        if key in seen:
            continue  # "Read more" after a linked headline: the same story
        seen.add(key)
        if not title:
            result.note(f"{label}: link {url} has no headline; kept with an empty title",
                        level=logging.INFO)
        position = len(result.articles) + 1
        item_id = f"{message_id}#{position}" if message_id else url_id(url)
        result.articles.append(Article(id=item_id, title=title, text=teaser, link=url,
                                       date_published=published, source=source))
    if not result.articles:
        result.note(f"{label}: no story links found")
    log.info("%s: %d linked stories", label, len(result.articles))
    return result


def _html_stories(html: str) -> list[tuple[str, str, str]]:
    if not html.strip():
        return []
    parser = lxml.html.HTMLParser(encoding="utf-8", remove_comments=True)
    root = lxml.html.document_fromstring(html.encode("utf-8", "replace"), parser=parser)
    etree.strip_elements(root, "script", "style", "head", with_tail=False)
    stories = []
    for anchor in root.iter("a"):
        url = (anchor.get("href") or "").strip()
        if not _is_story_link(url, _text(anchor)):
            continue
        if not _text(anchor) and not anchor.xpath("ancestor::h1|ancestor::h2|ancestor::h3"):
            continue  # an image link (logo, banner)
        title, teaser = _story_of(anchor)
        stories.append((title, teaser, url))
    return stories


_URL_IN_TEXT = re.compile(r"https?://[^\s<>\"')\]]+")


def _plain_stories(text: str) -> list[tuple[str, str, str]]:
    stories = []
    previous = ""
    for line in normalise_whitespace(text).splitlines():
        line = line.strip()
        match = _URL_IN_TEXT.search(line)
        if match is None:
            if line:
                previous = line
            continue
        url = match.group(0).rstrip(".,;")
        before = line[:match.start()].strip(" -–—:<(")
        title = before if len(before.split()) >= 3 else previous
        if _is_story_link(url, before or previous):
            stories.append((title, "", url))
        previous = ""
    return stories
