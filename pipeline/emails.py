"""E-mail newsletters (``.eml`` files, ``mbox`` folders, raw messages from IMAP) as
articles: the stdlib ``email`` package with the modern policy; an HTML newsletter is
split into one item per ``h1``/``h2``/``h3`` heading, since one message usually
carries several stories."""

from __future__ import annotations

import email
import email.policy
import logging
import mailbox
import re
from datetime import datetime, timezone
from email.message import EmailMessage
from pathlib import Path

from pipeline.article import Article
from pipeline.dedupe import hash_title_and_text
from pipeline.html_text import html_sections, normalise_whitespace
from pipeline.sources import ReadResult

log = logging.getLogger(__name__)

_URL = re.compile(r"https?://[^\s<>\"']+")


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
