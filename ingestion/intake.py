"""Intake: every incoming item is deduplicated against everything stored, then stored.

An item is a duplicate when the store already holds its source id from the same
source (``repeat``), its normalised content (``exact``, :func:`pipeline.dedupe.
content_hash`; for an item whose only content is a link, its canonical URL, so
different links are never merged), the same article reached through another link (``link``: equal
canonical URL from the link stage, e.g. one story in two newsletters with different
tracking parameters or redirects) or a near copy (``near``, the pipeline's
:class:`pipeline.dedupe.NearDuplicateIndex`, the same test the dataset build uses).
New items are stored as pending for the classify loop, with their link provenance.

An item whose only content is its link and whose page the link stage could not read
is not classified on nothing: it is stored ``awaiting_link`` and :meth:`Intake.
retry_links` fetches it again (``link_max_attempts`` fetches in all, one per
``link_retry_interval_s``); once read it is ``pending`` with the page's text, and when
the failure cannot mend (:data:`FINAL_LINK_FAILURES`, a 4xx) or the attempts run out it
is ``skipped`` with the reason in ``last_error`` (``GET /v1/items/{id}``), logged and
counted (``signals_ingest_link_waits_total{outcome}``): never silently lost.

One bad item never costs its batch: an item no store can hold (``ingestion.schema.
storage_problem``: a date at the edge of the calendar, an over-long id, a NUL character,
a lone surrogate)
or one the store refuses as data is answered ``rejected`` with its reason, logged and
counted (``signals_ingest_items_refused{source,reason}``), and the others are stored. A
store that is down still raises: nothing is claimed refused that a retry would store.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from dataclasses import dataclass
from typing import Literal, Sequence

from pipeline.article import Article
from sqlalchemy.exc import DataError

from pipeline.dedupe import NearDuplicateIndex, content_hash, hash_title_and_text
from pipeline.links import LinkEnricher, LinkProvenance, canonical_url
from ingestion.metrics import IngestMetrics
from ingestion.schema import AWAITING_LINK, PENDING, SKIPPED, printable_id, storage_problem
from ingestion.store import Store, StoredItem

log = logging.getLogger(__name__)

EMPTY_CONTENT = hash_title_and_text("", "")
"""The content hash of an item without words (a link alone, a failed fetch)."""


def dedupe_key(article: Article) -> str:
    """The hash exact dedupe compares: the normalised title + text, or, for an item
    whose only content is its link (a teaser-less newsletter entry whose page could not
    be fetched), its canonical URL: different links are never one item."""
    digest = content_hash(article)
    if digest != EMPTY_CONTENT or not article.link:
        return digest
    link = canonical_url(article.link) or article.link.strip()
    return hashlib.sha256(f"link {link}".encode()).hexdigest()


FINAL_LINK_FAILURES = frozenset({
    "not_needed", "no_link", "invalid_url", "robots_disallowed", "too_large",
    "unsupported_type", "too_many_redirects", "blocked_address", "extraction_failed"})
"""Link outcomes no retry can mend (with ``http_error`` below 500 other than 429)."""


def link_wait(article: Article, provenance: LinkProvenance | None) -> str | None:
    """``None`` when the item has content to classify; else what it waits for:
    ``awaiting_link`` (a fetch that may succeed later) or ``skipped``."""
    if provenance is None or not article.link or content_hash(article) != EMPTY_CONTENT:
        return None
    status = provenance.fetch_status
    if status == "ok":
        return None
    http_status = provenance.http_status or 0
    final = status in FINAL_LINK_FAILURES or (
        status == "http_error" and http_status < 500 and http_status != 429)
    return SKIPPED if final else AWAITING_LINK


def _link_reason(provenance: LinkProvenance) -> str:
    status, detail = provenance.fetch_status, provenance.detail
    return f"{status}: {detail}" if detail else status


@dataclass(frozen=True)
class Accepted:
    """What happened to one incoming item."""

    external_id: str
    status: Literal["accepted", "duplicate", "rejected"]
    item_id: int | None
    duplicate_kind: str | None = None
    similarity: float | None = None
    reason: tuple[str, str] | None = None
    """Why a ``rejected`` item was not stored: ``(kind, message)``."""


class Intake:
    """Deduplicate and store incoming items.

    The near-duplicate index holds the MinHash signature of every stored item; the
    signatures are stored with the items, so a restart rebuilds it without re-hashing
    any text (signatures of another length are skipped: exact dedupe still covers them).
    """

    def __init__(self, store: Store, metrics: IngestMetrics, threshold: float,
                 num_perm: int, shadow: bool):
        self.store, self.metrics, self.shadow = store, metrics, shadow
        self.index = NearDuplicateIndex(threshold, num_perm)
        for item_id, raw in store.signatures():
            self.index.add_values(item_id, raw)
        log.info("dedupe index: %d stored items", len(self.index))
        self._lock = threading.Lock()

    def accept(self, articles: list[Article], source: str,
               provenances: Sequence[LinkProvenance | None] | None = None) -> list[Accepted]:
        """Deduplicate and store ``articles`` from ``source``; one answer per article.

        ``provenances`` (one ``LinkProvenance`` per article, from the link stage) are stored beside the items and their canonical URLs feed dedupe.
        Serialised by a lock: the near-duplicate index and the store must agree on
        what was seen, also for copies arriving in the same batch.
        """
        if provenances is None:
            provenances = [None] * len(articles)
        if len(provenances) != len(articles):
            raise ValueError(f"{len(provenances)} provenances for {len(articles)} articles")
        answers = []
        with self._lock:
            for article, provenance in zip(articles, provenances):
                self.metrics.items_read.labels(source).inc()
                problem = storage_problem(article, source)
                if problem is None:
                    try:
                        answers.append(self._accept_one(article, source, provenance))
                        continue
                    except (DataError, ValueError, OverflowError) as error:
                        problem = ("store_error", f"{type(error).__name__}: {error}"[:500])
                answers.append(self._refuse(article, source, *problem))
        return answers

    def _refuse(self, article: Article, source: str, reason: str, message: str) -> Accepted:
        shown = printable_id(str(article.id))  # the answer must be encodable JSON
        self.metrics.items_refused.labels(source[:100], reason).inc()
        log.warning("%s item %r refused (%s): %s", source[:100], shown, reason, message)
        return Accepted(shown, "rejected", None, reason=(reason, message))

    def _accept_one(self, article: Article, source: str,
                    provenance: LinkProvenance | None = None) -> Accepted:
        external_id = str(article.id)
        digest = dedupe_key(article)
        exact = self.store.find_exact(source, external_id, digest)
        if exact is not None:
            item_id, kind = exact
            if kind == "exact":
                self.store.add_alias(source, external_id, item_id, kind, 1.0)
            self.metrics.duplicates.labels(source, kind).inc()
            return Accepted(external_id, "duplicate", item_id, kind, 1.0)
        canonical = provenance.canonical_url if provenance else None
        same_article = self.store.find_by_canonical_url(canonical) if canonical else None
        if same_article is not None:
            self.store.add_alias(source, external_id, same_article, "link", 1.0)
            self.metrics.duplicates.labels(source, "link").inc()
            log.info("%s item %s links to the article of item %d (%s)", source, external_id,
                     same_article, canonical)
            return Accepted(external_id, "duplicate", same_article, "link", 1.0)
        minhash = self.index.signature(article)
        near = self.index.nearest(minhash) if minhash is not None else None
        if near is not None:
            item_id, similarity = near
            self.store.add_alias(source, external_id, item_id, "near", similarity)
            self.metrics.duplicates.labels(source, "near").inc()
            log.info("%s item %s is a near copy (%.2f) of item %d", source, external_id,
                     similarity, item_id)
            return Accepted(external_id, "duplicate", item_id, "near", similarity)
        raw = NearDuplicateIndex.signature_values(minhash) if minhash is not None else None
        state = link_wait(article, provenance) or PENDING
        reason = _link_reason(provenance) if provenance and state != PENDING else None
        item_id, inserted = self.store.insert_item(
            article, source, digest, raw, shadow=self.shadow, provenance=provenance,
            state=state, attempts=1 if state != PENDING else 0, last_error=reason)
        if not inserted:  # another process stored it between our check and insert
            self.metrics.duplicates.labels(source, "exact").inc()
            return Accepted(external_id, "duplicate", item_id, "exact", 1.0)
        if minhash is not None:
            self.index.add(item_id, minhash)
        self.metrics.items_accepted.labels(source).inc()
        if state != PENDING:
            outcome = "waiting" if state == AWAITING_LINK else "skipped"
            self.metrics.link_waits.labels(outcome).inc()
            log.log(logging.INFO if outcome == "waiting" else logging.WARNING,
                    "%s item %s (item %d) has only its link, not read (%s): %s", source,
                    external_id, item_id, reason, "it waits for a retry"
                    if outcome == "waiting" else "skipped, it will not be classified")
        return Accepted(external_id, "accepted", item_id)

    # --- link-only items waiting for their page ------------------------------------------

    async def retry_links(self, enricher: LinkEnricher, max_attempts: int,
                          deadline_s: float | None = None, limit: int = 200) -> int:
        """Fetch the pages of the oldest ``limit`` items still ``awaiting_link`` once
        more; the number that became ``pending`` (worth waking the classify loops)."""
        waiting = await asyncio.to_thread(self.store.awaiting_link, limit)
        if not waiting:
            return 0
        results = await enricher.enrich([item.article for item, _ in waiting],
                                        deadline_s=deadline_s)
        settled = [(item, attempts, result.article, result.provenance)
                   for (item, attempts), result in zip(waiting, results)]
        return await asyncio.to_thread(self._settle_links, settled, max_attempts)

    def _settle_links(self, settled: list[tuple[StoredItem, int, Article, LinkProvenance]],
                      max_attempts: int) -> int:
        filled = 0
        with self._lock:
            for item, attempts, article, provenance in settled:
                wait = link_wait(article, provenance)
                skip = None
                if wait is None:
                    problem = storage_problem(article, item.source)
                    minhash = self.index.signature(article)
                    near = self.index.nearest(minhash) if minhash is not None else None
                    copy = (self.store.find_by_canonical_url(provenance.canonical_url)
                            if provenance.canonical_url else None)
                    if problem is not None:
                        skip = f"the page cannot be stored ({problem[0]}: {problem[1]})"
                    elif copy is not None and copy != item.id:
                        skip = f"its page is the article of item {copy}"
                    elif near is not None and near[0] != item.id:
                        skip = f"its page is a near copy ({near[1]:.2f}) of item {near[0]}"
                    else:
                        raw = (NearDuplicateIndex.signature_values(minhash)
                               if minhash is not None else None)
                        if self.store.settle_link(item.id, provenance, article=article,
                                                  minhash=raw):
                            if minhash is not None:
                                self.index.add(item.id, minhash)
                            self.metrics.link_waits.labels("filled").inc()
                            log.info("item %d: its link was read on fetch %d", item.id,
                                     attempts + 1)
                            filled += 1
                        continue
                elif wait == SKIPPED:
                    skip = _link_reason(provenance)
                elif attempts + 1 >= max_attempts:
                    skip = (f"{_link_reason(provenance)} (still not read after "
                            f"{attempts + 1} fetches)")
                if skip is None:
                    self.store.settle_link(item.id, provenance)
                    self.metrics.link_waits.labels("retry_failed").inc()
                    log.info("item %d: fetch %d of its link failed (%s); it waits",
                             item.id, attempts + 1, _link_reason(provenance))
                elif self.store.settle_link(item.id, provenance, skip_reason=skip):
                    self.metrics.link_waits.labels("skipped").inc()
                    log.warning("item %d skipped, it will not be classified: %s",
                                item.id, skip)
        return filled
