"""Sources: what every reader of feeds, e-mail newsletters and record files returns.

Four kinds of input reach the pipeline, and each reader yields
:class:`~pipeline.article.Article` objects with plain-text bodies:

* **Feeds** (RSS 0.9x / 1.0 / 2.0, Atom; :mod:`pipeline.feeds`): fetched with ``httpx``
  so timeouts and HTTP errors are explicit (``FeedError``), parsed with ``feedparser``,
  which knows the formats' many dialects and their character-encoding rules.
* **E-mail newsletters** (``.eml`` files, ``mbox`` folders; :mod:`pipeline.emails`): the
  stdlib ``email`` package with the modern policy; an HTML newsletter is split into one
  item per ``h1``/``h2``/``h3`` heading (:mod:`pipeline.html_text`), since one message
  usually carries several stories. IMAP mailboxes: :mod:`pipeline.imap`.
* **Records** of the original dataset's format as JSONL, CSV, or one JSON array
  (:mod:`pipeline.records`; an array is read streamed with ``ijson``, so a
  35,000-article file is never held in memory as text and as articles at once).

Real inputs are messy, and one bad item must never stop a run nor lose the others:
each reader skips what it cannot use, logs why, and returns a :class:`ReadResult`
whose ``skipped`` and ``problems`` let the caller count and report. Only failures that
leave nothing to read (a feed URL that errors or times out) raise.

Dates are normalised to timezone-aware UTC datetimes, so articles from different
sources sort and split consistently.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pipeline.article import Article

log = logging.getLogger(__name__)


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
