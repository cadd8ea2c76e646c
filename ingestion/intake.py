"""Intake: every incoming item is deduplicated against everything stored, then stored.

An item is a duplicate when the store already holds its source id from the same
source (``repeat``), its normalised content (``exact``, :func:`pipeline.dedupe.
content_hash`), the same article reached through another link (``link``: equal
canonical URL from the link stage, e.g. one story in two newsletters with different
tracking parameters or redirects) or a near copy (``near``, the pipeline's
:class:`pipeline.dedupe.NearDuplicateIndex`, the same test the dataset build uses).
New items are stored as pending for the classify loop, with their link provenance.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from pipeline.article import Article
from pipeline.dedupe import NearDuplicateIndex, content_hash
from ingestion.metrics import IngestMetrics
from ingestion.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Accepted:
    """What happened to one incoming item."""

    external_id: str
    status: Literal["accepted", "duplicate"]
    item_id: int
    duplicate_kind: str | None = None
    similarity: float | None = None


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
               provenances: Sequence[dict[str, Any] | None] | None = None) -> list[Accepted]:
        """Deduplicate and store ``articles`` from ``source``; one answer per article.

        ``provenances`` (one ``LinkProvenance`` as JSON per article, from the link
        stage) are stored beside the items and their canonical URLs feed dedupe.
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
                answers.append(self._accept_one(article, source, provenance))
        return answers

    def _accept_one(self, article: Article, source: str,
                    provenance: dict[str, Any] | None = None) -> Accepted:
        external_id = str(article.id)
        digest = content_hash(article)
        exact = self.store.find_exact(source, external_id, digest)
        if exact is not None:
            item_id, kind = exact
            if kind == "exact":
                self.store.add_alias(source, external_id, item_id, kind, 1.0)
            self.metrics.duplicates.labels(source, kind).inc()
            return Accepted(external_id, "duplicate", item_id, kind, 1.0)
        canonical = provenance.get("canonical_url") if provenance else None
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
        item_id, inserted = self.store.insert_item(article, source, digest, raw,
                                                   shadow=self.shadow, provenance=provenance)
        if not inserted:  # another process stored it between our check and insert
            self.metrics.duplicates.labels(source, "exact").inc()
            return Accepted(external_id, "duplicate", item_id, "exact", 1.0)
        if minhash is not None:
            self.index.add(item_id, minhash)
        self.metrics.items_accepted.labels(source).inc()
        return Accepted(external_id, "accepted", item_id)
