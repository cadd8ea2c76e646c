"""HTML to readable text: paragraphs kept, code and hidden teasers dropped, and an HTML
newsletter cut into one section per story heading (what the e-mail and feed readers use)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import lxml.html
from lxml import etree

ITEM_HEADINGS = frozenset({"h1", "h2", "h3"})
"""Headings that start a new item when an HTML newsletter is split."""

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
