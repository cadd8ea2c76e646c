"""Step 2 of the build: uniform articles (UTC dates, trimmed title/text, unique ids)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timezone

from pipeline.article import Article
from pipeline.dedupe import content_hash

log = logging.getLogger(__name__)


def _utc(published: datetime | date | None) -> datetime | None:
    if published is None:
        return None
    if not isinstance(published, datetime):
        published = datetime.combine(published, datetime.min.time())
    # Sources already give UTC; naive record dates are read as UTC, as dedupe does.
    if published.tzinfo is None:
        return published.replace(tzinfo=timezone.utc)
    return published.astimezone(timezone.utc)


@dataclass
class NormaliseResult:
    articles: list[Article]
    empty_skipped: int = 0
    ids_renamed: int = 0


def normalise_articles(articles: list[Article], keep_linked: bool = False) -> NormaliseResult:
    """Uniform articles: UTC dates, trimmed title/text, unique ids.

    An article with neither title nor text is skipped (logged), unless ``keep_linked``
    and it has a link (a link-list row: the link stage reads its text). Ids must be unique in a
    dataset (views and label stores key on them), but two sources can reuse one id for
    different items; the later one becomes ``<source>/<id>`` (logged). Identical copies
    with one id are left for dedupe to drop.
    """
    result = NormaliseResult([])
    seen: dict[str, str] = {}  # id -> content hash of the article holding it
    for article in articles:
        problem = article.content_problem()  # the rule the APIs refuse articles by
        if problem is not None and not (keep_linked and article.link):
            log.warning("%s (from %s); skipped", problem, article.source)
            result.empty_skipped += 1
            continue
        title, text = article.title.strip(), article.text.strip()
        article = article.model_copy(update={
            "title": title, "text": text, "date_published": _utc(article.date_published)})
        digest = content_hash(article)
        key = str(article.id)
        if key in seen and seen[key] != digest:
            new_id = f"{article.source}/{article.id}"
            suffix = 2
            while new_id in seen:
                new_id, suffix = f"{article.source}/{article.id}#{suffix}", suffix + 1
            log.warning("id %r is used by two different articles; the one from %s becomes %r",
                        article.id, article.source, new_id)
            article = article.model_copy(update={"id": new_id})
            key = new_id
            result.ids_renamed += 1
        seen.setdefault(key, digest)
        result.articles.append(article)
    return result
