"""The ingestion service: sources in, deduplicated items stored, classified exactly once.

Items reach the service two ways: it **polls** configured sources on their schedules
(RSS/Atom feeds, IMAP mailboxes, a drop directory of ``.eml``/``.mbox``/``.jsonl``/
``.csv`` files), all parsed by the pipeline's readers (``pipeline/sources.py``), and
clients **push** them (``POST /v1/items``). Each item is deduplicated against
everything already stored (same source id, same normalised content, or a MinHash near
copy: ``pipeline/dedupe.py``), stored as ``pending``, and classified in batches through
the classification API by adapter alias, so a promotion takes effect on the next
batch. A ``shadow_adapter`` (e.g. ``candidate``) classifies the same items; its
predictions are stored and measured but never shown as signals.

Routes owned by :func:`create_ingest_app`:

* ``POST /v1/items``      push articles (the article contract); per-item status
* ``POST /v1/feedback``   one verdict or a bulk list (item id or source id, label, source)
* ``GET  /v1/items/{id}`` an item with its predictions and feedback
* ``GET  /v1/signals``    what analysts see: items the primary adapter flags, newest first
* ``GET  /v1/quality``    online quality per adapter version and window (JSON)
* ``GET  /v1/drift``      drift rules as last evaluated
* ``GET  /health``, ``GET /metrics``

Failures answer with the classification API's one error shape
(``serve.app.error_response``). The store (``ingestion/store.py``) makes classification
exactly-once across crashes; a classification API outage leaves items pending and the
loop retries with exponential back-off.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
from datasketch import MinHash, MinHashLSH
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest
from pydantic import BaseModel, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.article import Article
from pipeline.dedupe import LSH_WEIGHTS, MINHASH_SEED, content_hash, shingles
from pipeline.imap import ImapError, read_imap
from pipeline.labels import LabelVote
from pipeline.sources import FeedError, ReadResult, read_csv, read_eml, read_feed, read_jsonl
from pipeline.sources import read_mbox
from serve.app import error_response
from ingestion.drift import DriftMonitor
from ingestion.config import FeedSourceConfig, ImapSourceConfig, IngestConfig
from ingestion.online_metrics import OnlineQualityCollector, online_quality, window_name
from ingestion.store import NewPrediction, Role, Store, StoredItem

log = logging.getLogger(__name__)

DROP_SUFFIXES = {".eml": "eml", ".mbox": "mbox", ".jsonl": "jsonl", ".csv": "csv"}


# --- metrics ------------------------------------------------------------------------

class IngestMetrics:
    """Process counters of one service instance (own registry: several per process in
    tests). Store-derived metrics come from ``OnlineQualityCollector`` and drift."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.items_read = Counter("signals_ingest_items_read",
                                  "Items parsed from a source or pushed, before dedupe",
                                  ["source"], registry=r)
        self.items_accepted = Counter("signals_ingest_items_accepted",
                                      "New items stored for classification", ["source"],
                                      registry=r)
        self.duplicates = Counter("signals_ingest_duplicates",
                                  "Items not stored because already seen: repeat (same "
                                  "source id), exact (same content), near (MinHash copy)",
                                  ["source", "kind"], registry=r)
        self.items_skipped = Counter("signals_ingest_items_skipped",
                                     "Items a reader could not use (no title and text, "
                                     "invalid record, truncated entry), by source",
                                     ["source"], registry=r)
        self.polls = Counter("signals_ingest_source_polls",
                             "Source polls by outcome (ok, error)", ["source", "outcome"],
                             registry=r)
        self.source_errors = Counter(
            "signals_ingest_source_errors",
            "Source problems by kind: timeout, http_status, connection, malformed, "
            "not_a_feed, no_items, unreadable", ["source", "kind"], registry=r)
        self.last_poll = Gauge("signals_ingest_last_poll_timestamp_seconds",
                               "Unix time of the last successful poll", ["source"], registry=r)
        self.classify_requests = Counter(
            "signals_ingest_classify_requests",
            "Requests to the classification API by role and outcome (ok, unavailable, "
            "rejected, error)", ["role", "outcome"], registry=r)
        self.classified = Counter("signals_ingest_classified_items",
                                  "Predictions stored by role", ["role"], registry=r)
        self.rejected = Counter("signals_ingest_rejected_items",
                                "Items the classification API refused (4xx), by role",
                                ["role"], registry=r)
        self.classify_latency = Histogram(
            "signals_ingest_classify_request_seconds",
            "Duration of one classification request (model time included)", ["role"],
            registry=r, buckets=(.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120))
        self.publication_latency = Histogram(
            "signals_ingest_publication_to_prediction_seconds",
            "Time from an item's publication to its stored prediction", ["role"],
            registry=r, buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 86400, 7 * 86400,
                                 30 * 86400))
        self.classifier_up = Gauge("signals_ingest_classifier_up",
                                   "1 when the last classification request succeeded",
                                   registry=r)
        self.feedback = Counter(
            "signals_ingest_feedback",
            "Feedback entries by label source and outcome (recorded, replaced, duplicate, "
            "conflict, unknown_item, ambiguous_item)", ["source", "outcome"], registry=r)
        self.api_errors = Counter("signals_ingest_api_errors",
                                  "Ingestion API errors by kind", ["kind"], registry=r)


# --- deduplication against everything stored -----------------------------------------

class SeenIndex:
    """Near-duplicate index over every stored item (exact copies are found by the
    store's unique keys). Signatures are stored with the items, so a restart rebuilds
    the index without re-hashing any text."""

    def __init__(self, threshold: float, num_perm: int):
        self.threshold, self.num_perm = threshold, num_perm
        self._empty = MinHash(num_perm=num_perm, seed=MINHASH_SEED)
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS)
        self._signatures: dict[int, MinHash] = {}

    def signature(self, article: Article) -> MinHash | None:
        shingle_set = shingles(article)
        if not shingle_set:
            return None
        minhash = self._empty.copy()
        minhash.update_batch(s.encode("utf-8") for s in shingle_set)
        return minhash

    def nearest(self, minhash: MinHash) -> tuple[int, float] | None:
        """The stored item this signature copies (verified on the full signature)."""
        best = None
        for item_id in sorted(self._lsh.query(minhash)):
            similarity = minhash.jaccard(self._signatures[item_id])
            if similarity >= self.threshold and (best is None or similarity > best[1]):
                best = (item_id, similarity)
        return best

    def add(self, item_id: int, minhash: MinHash) -> None:
        self._lsh.insert(item_id, minhash)
        self._signatures[item_id] = minhash

    def load(self, store: Store) -> int:
        for item_id, raw in store.signatures():
            values = np.frombuffer(raw, dtype=np.uint64)
            if len(values) != self.num_perm:
                continue  # stored under another num_perm: exact dedupe still covers it
            self.add(item_id, MinHash(num_perm=self.num_perm, seed=MINHASH_SEED,
                                      hashvalues=values.copy(), scheme=self._empty.scheme))
        return len(self._signatures)


@dataclass(frozen=True)
class Accepted:
    """What happened to one incoming item."""

    external_id: str
    status: Literal["accepted", "duplicate"]
    item_id: int
    duplicate_kind: str | None = None
    similarity: float | None = None


# --- the service ----------------------------------------------------------------------

class RetryableError(RuntimeError):
    """The classification API could not answer now (down, 5xx, timeout, no adapter)."""


class RejectedError(RuntimeError):
    """The classification API refused the request itself (4xx other than 404)."""


class IngestionService:
    """Pollers, the dedupe/store path, the classifier loops and drift, in one process."""

    def __init__(self, config: IngestConfig, store: Store | None = None):
        self.config = config
        self.store = store or Store(config.database_url, config.label_priority)
        self.metrics = IngestMetrics()
        self.index = SeenIndex(config.dedupe_threshold, config.dedupe_num_perm)
        loaded = self.index.load(self.store)
        log.info("dedupe index: %d stored items", loaded)
        self.quality = OnlineQualityCollector(self.store, config.metric_windows_days,
                                              config.metrics_cache_s)
        self.metrics.registry.register(self.quality)
        self.drift = DriftMonitor(self.store, config.drift, self.metrics.registry)
        self._accept_lock = threading.Lock()
        self._work = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._client: httpx.AsyncClient | None = None

    # --- accepting items ------------------------------------------------------------

    def accept(self, articles: list[Article], source: str) -> list[Accepted]:
        """Deduplicate and store ``articles`` from ``source``; one answer per article.

        Serialised by a lock: the near-duplicate index and the store must agree on
        what was seen, also for copies arriving in the same batch.
        """
        answers = []
        with self._accept_lock:
            for article in articles:
                self.metrics.items_read.labels(source).inc()
                answers.append(self._accept_one(article, source))
        return answers

    def _accept_one(self, article: Article, source: str) -> Accepted:
        external_id = str(article.id)
        digest = content_hash(article)
        exact = self.store.find_exact(source, external_id, digest)
        if exact is not None:
            item_id, kind = exact
            if kind == "exact":
                self.store.add_alias(source, external_id, item_id, kind, 1.0)
            self.metrics.duplicates.labels(source, kind).inc()
            return Accepted(external_id, "duplicate", item_id, kind, 1.0)
        minhash = self.index.signature(article)
        near = self.index.nearest(minhash) if minhash is not None else None
        if near is not None:
            item_id, similarity = near
            self.store.add_alias(source, external_id, item_id, "near", similarity)
            self.metrics.duplicates.labels(source, "near").inc()
            log.info("%s item %s is a near copy (%.2f) of item %d", source, external_id,
                     similarity, item_id)
            return Accepted(external_id, "duplicate", item_id, "near", similarity)
        raw = minhash.hashvalues.astype(np.uint64).tobytes() if minhash is not None else None
        item_id, inserted = self.store.insert_item(article, source, digest, raw,
                                                   shadow=self.config.shadow_adapter is not None)
        if not inserted:  # another process stored it between our check and insert
            self.metrics.duplicates.labels(source, "exact").inc()
            return Accepted(external_id, "duplicate", item_id, "exact", 1.0)
        if minhash is not None:
            self.index.add(item_id, minhash)
        self.metrics.items_accepted.labels(source).inc()
        return Accepted(external_id, "accepted", item_id)

    async def accept_async(self, articles: list[Article], source: str) -> list[Accepted]:
        answers = await asyncio.to_thread(self.accept, articles, source)
        if any(a.status == "accepted" for a in answers):
            self._work.set()
        return answers

    def _count_read_problems(self, source: str, result: ReadResult) -> None:
        if result.skipped:
            self.metrics.items_skipped.labels(source).inc(result.skipped)

    # --- sources --------------------------------------------------------------------

    async def poll_feed(self, feed: FeedSourceConfig) -> int:
        """Fetch and ingest one feed; the number of new items (errors are counted)."""
        try:
            result = await asyncio.to_thread(read_feed, feed.url, feed.name,
                                             self.config.feed_timeout_s)
        except FeedError as error:
            kind = ("timeout" if "timed out" in error.reason
                    else "http_status" if error.reason.startswith("HTTP")
                    else "connection")
            self.metrics.source_errors.labels(feed.name, kind).inc()
            self.metrics.polls.labels(feed.name, "error").inc()
            log.warning("feed %s: %s", feed.name, error)
            return 0
        self._count_read_problems(feed.name, result)
        if not result.feed_format:
            self.metrics.source_errors.labels(feed.name, "not_a_feed").inc()
            self.metrics.polls.labels(feed.name, "error").inc()
            log.warning("feed %s (%s): the answer is not an RSS or Atom feed; nothing read",
                        feed.name, feed.url)
            return 0
        if result.malformed:
            self.metrics.source_errors.labels(feed.name, "malformed").inc()
            log.warning("feed %s: malformed XML; kept the %d entries a tolerant parse "
                        "recovered", feed.name, len(result.articles))
        answers = await self.accept_async(result.articles, feed.name)
        self.metrics.polls.labels(feed.name, "ok").inc()
        self.metrics.last_poll.labels(feed.name).set(time.time())
        return sum(a.status == "accepted" for a in answers)

    def _read_drop_file(self, path: Path) -> ReadResult:
        kind = DROP_SUFFIXES[path.suffix.lower()]
        reader: Callable[..., ReadResult] = {"eml": read_eml, "mbox": read_mbox,
                                             "jsonl": read_jsonl, "csv": read_csv}[kind]
        return reader(path, "drop")

    async def scan_drop_dir(self) -> int:
        """Ingest every file in the drop directory, then move it to processed/ (failed/
        when unreadable). A file moves only after its items are stored, so a crash in
        between re-reads it and dedupe drops what was already stored."""
        directory = self.config.drop_dir
        if directory is None or not directory.is_dir():
            return 0
        accepted = 0
        for path in sorted(p for p in directory.iterdir()
                           if p.is_file() and p.suffix.lower() in DROP_SUFFIXES):
            try:
                result = await asyncio.to_thread(self._read_drop_file, path)
            except Exception as error:  # any reader failure: keep the file for a human
                self.metrics.source_errors.labels("drop", "unreadable").inc()
                log.error("drop file %s unreadable (%s: %s); moved to failed/", path.name,
                          type(error).__name__, error)
                _move(path, directory / "failed")
                continue
            self._count_read_problems("drop", result)
            if not result.articles:
                self.metrics.source_errors.labels("drop", "no_items").inc()
                log.warning("drop file %s has no items (%s)", path.name,
                            "; ".join(result.problems) or "empty")
            answers = await self.accept_async(result.articles, "drop")
            accepted += sum(a.status == "accepted" for a in answers)
            self.metrics.polls.labels("drop", "ok").inc()
            _move(path, directory / "processed")
        self.metrics.last_poll.labels("drop").set(time.time())
        return accepted

    async def poll_imap(self, mailbox: ImapSourceConfig) -> int:
        """Ingest the mailbox's matching messages (one item per newsletter story)."""
        config = mailbox
        if mailbox.lookback_days is not None:
            since = (datetime.now(timezone.utc) - timedelta(days=mailbox.lookback_days)).date()
            config = mailbox.model_copy(update={"since": since})
        try:
            result = await asyncio.to_thread(read_imap, config)
        except ImapError as error:
            self.metrics.source_errors.labels(mailbox.source, "connection").inc()
            self.metrics.polls.labels(mailbox.source, "error").inc()
            log.warning("%s", error)
            return 0
        self._count_read_problems(mailbox.source, result)
        answers = await self.accept_async(result.articles, mailbox.source)
        self.metrics.polls.labels(mailbox.source, "ok").inc()
        self.metrics.last_poll.labels(mailbox.source).set(time.time())
        return sum(a.status == "accepted" for a in answers)

    async def _every(self, interval_s: float, poll: Callable[[], Any], what: str) -> None:
        while True:
            try:
                await poll()
            except Exception:  # a poller must survive anything a source throws at it
                log.exception("%s poll failed", what)
            await asyncio.sleep(interval_s)

    # --- classification -------------------------------------------------------------

    def adapter_for(self, role: Role) -> str | None:
        return self.config.adapter if role == "primary" else self.config.shadow_adapter

    async def _classify_request(self, role: Role, batch: list[StoredItem]) -> list[dict]:
        """One request to the classification API; its ``results``."""
        body: dict[str, Any] = {
            # The store id travels as the article id: answers map back unambiguously.
            "articles": [item.article.to_record() | {"id": item.id} for item in batch],
            "adapter": self.adapter_for(role)}
        if self.config.threshold is not None:
            body["threshold"] = self.config.threshold
        started = time.perf_counter()
        try:
            response = await self._client.post("/v1/classify", json=body)
        except httpx.HTTPError as error:
            raise RetryableError(f"classification API unreachable: {type(error).__name__}: "
                                 f"{error}") from error
        self.metrics.classify_latency.labels(role).observe(time.perf_counter() - started)
        if response.status_code >= 500 or response.status_code in (404, 408, 429):
            # 404 is adapter_not_found: an alias not set yet is a deployment state that
            # a promotion fixes, not a property of the items.
            raise RetryableError(f"classification API answered {response.status_code}: "
                                 f"{response.text[:300]}")
        if response.status_code >= 400:
            raise RejectedError(f"classification API refused the request "
                                f"({response.status_code}): {response.text[:300]}")
        results = response.json()["results"]
        if sorted(r["id"] for r in results) != sorted(item.id for item in batch):
            raise RetryableError("classification API answered for other items than asked")
        return results

    def _store_results(self, role: Role, results: list[dict]) -> int:
        stored = self.store.record_predictions(role, [
            NewPrediction(item_id=r["id"], requested=r["requested"], adapter=r["adapter"],
                          p_signal=r["p_signal"], threshold=r["threshold"], label=r["label"],
                          truncated=r["truncated"]) for r in results])
        return stored

    async def classify_pending(self, role: Role) -> int:
        """Classify one batch of pending items for ``role``; how many were stored.

        Raises :class:`RetryableError` when the API cannot answer (the items stay
        pending). A batch the API refuses is retried item by item, so one bad item is
        rejected alone and the others are classified.
        """
        batch = await asyncio.to_thread(self.store.pending, role, self.config.batch_size)
        if not batch:
            return 0
        try:
            results = await self._classify_request(role, batch)
        except RetryableError as error:
            outcome = "unavailable" if "unreachable" in str(error) else "error"
            self.metrics.classify_requests.labels(role, outcome).inc()
            self.metrics.classifier_up.set(0)
            await asyncio.to_thread(self.store.record_failure, role, [i.id for i in batch],
                                    str(error), False)
            raise
        except RejectedError as error:
            self.metrics.classify_requests.labels(role, "rejected").inc()
            if len(batch) == 1:
                log.error("item %d rejected by the classification API: %s", batch[0].id, error)
                self.metrics.rejected.labels(role).inc()
                await asyncio.to_thread(self.store.record_failure, role, [batch[0].id],
                                        str(error), True)
                return 0
            results = []
            for item in batch:
                try:
                    results += await self._classify_request(role, [item])
                except RejectedError as single_error:
                    log.error("item %d rejected by the classification API: %s", item.id,
                              single_error)
                    self.metrics.rejected.labels(role).inc()
                    await asyncio.to_thread(self.store.record_failure, role, [item.id],
                                            str(single_error), True)
        self.metrics.classify_requests.labels(role, "ok").inc()
        self.metrics.classifier_up.set(1)
        stored = await asyncio.to_thread(self._store_results, role, results)
        self.metrics.classified.labels(role).inc(stored)
        by_id = {item.id: item for item in batch}
        now = time.time()
        for result in results:
            published = by_id[result["id"]].published_at
            if published is not None:
                self.metrics.publication_latency.labels(role).observe(
                    max(0.0, now - published.timestamp()))
        return stored

    async def _classify_loop(self, role: Role) -> None:
        failures = 0
        while True:
            try:
                stored = await self.classify_pending(role)
                failures = 0
            except RetryableError as error:
                failures += 1
                wait = min(self.config.retry_max_s,
                           self.config.retry_initial_s * 2 ** (failures - 1))
                log.warning("%s classification failed (%s); items stay pending, retry in "
                            "%.1f s", role, error, wait)
                await asyncio.sleep(wait)
                continue
            except Exception:  # the loop must outlive a bug or a store hiccup
                log.exception("%s classification loop error", role)
                await asyncio.sleep(self.config.retry_initial_s)
                continue
            if stored == 0:
                self._work.clear()
                try:
                    await asyncio.wait_for(self._work.wait(), self.config.idle_poll_s)
                except TimeoutError:
                    pass

    async def _drift_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.drift.interval_s)
            try:
                await asyncio.to_thread(self.drift.check)
            except Exception:
                log.exception("drift evaluation failed")

    # --- feedback and later label sources -------------------------------------------

    def record_feedback(self, entry: FeedbackEntry) -> dict[str, Any]:
        """Record one feedback entry; the answer names the outcome (and the item)."""
        if entry.item_id is not None:
            candidates = [entry.item_id] if self.store.item_exists(entry.item_id) else []
        else:
            candidates = self.store.find_items_by_external_id(entry.external_id,
                                                              entry.item_source)
        who = (f"item {entry.item_id}" if entry.item_id is not None
               else f"source id {entry.external_id!r}")
        if not candidates:
            self.metrics.feedback.labels(entry.source, "unknown_item").inc()
            log.warning("feedback from %s for unknown %s", entry.source, who)
            return {"outcome": "unknown_item", "message": f"no stored item with {who}"}
        if len(candidates) > 1:
            self.metrics.feedback.labels(entry.source, "ambiguous_item").inc()
            return {"outcome": "ambiguous_item",
                    "message": f"{who} matches several items; give item_source or item_id"}
        outcome = self.store.add_feedback(candidates[0], entry.label, entry.source,
                                          entry.note, entry.replace)
        self.metrics.feedback.labels(entry.source, outcome).inc()
        messages = {
            "recorded": "feedback recorded",
            "replaced": "earlier verdict of this source replaced",
            "duplicate": "this source already gave this verdict; nothing changed",
            "conflict": "this source already gave a different verdict; send replace=true "
                        "to change it",
        }
        if outcome in ("duplicate", "conflict"):
            log.info("feedback from %s for item %d: %s", entry.source, candidates[0], outcome)
        return {"outcome": outcome, "item_id": candidates[0], "message": messages[outcome]}

    def apply_label_source(self, source: str, vote: Callable[[Article], LabelVote | None],
                           published_before: datetime | None = None,
                           limit: int = 1000) -> dict[str, int]:
        """Run a pipeline label source over stored items it has not judged yet (e.g. the
        trend rule, months after publication); its votes become feedback. Abstentions
        are not recorded, so the source is asked again next time."""
        counts = {"voted": 0, "abstained": 0}
        for item in self.store.items_without_feedback_from(source, published_before, limit):
            result = vote(item.article)
            if result is None or result.label is None:
                counts["abstained"] += 1
                continue
            note = str(result.detail) if result.detail else None
            outcome = self.store.add_feedback(item.id, int(result.label), source, note)
            self.metrics.feedback.labels(source, outcome).inc()
            counts["voted"] += 1
        return counts

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        self._client = httpx.AsyncClient(base_url=self.config.classifier_url,
                                         timeout=self.config.classify_timeout_s)
        loops = [self._classify_loop("primary")]
        if self.config.shadow_adapter is not None:
            loops.append(self._classify_loop("shadow"))
        for feed in self.config.feeds:
            loops.append(self._every(feed.interval_s, lambda f=feed: self.poll_feed(f),
                                     f"feed {feed.name}"))
        for mailbox in self.config.imap:
            loops.append(self._every(mailbox.interval_s, lambda m=mailbox: self.poll_imap(m),
                                     f"IMAP {mailbox.source}"))
        if self.config.drop_dir is not None:
            self.config.drop_dir.mkdir(parents=True, exist_ok=True)
            loops.append(self._every(self.config.drop_interval_s, self.scan_drop_dir,
                                     "drop directory"))
        loops.append(self._drift_loop())
        self._tasks = [asyncio.create_task(loop) for loop in loops]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()


def _move(path: Path, directory: Path) -> None:
    directory.mkdir(exist_ok=True)
    target = directory / path.name
    if target.exists():  # the same file name dropped twice: keep both
        target = directory / f"{path.stem}-{time.time_ns()}{path.suffix}"
    shutil.move(str(path), target)


# --- request schemas ------------------------------------------------------------------

class PushRequest(BaseModel):
    """Articles pushed by a client: one (``article``) or several (``articles``)."""

    article: Article | None = None
    articles: list[Article] | None = None
    source: str = Field(default="push", min_length=1, max_length=100,
                        description="Source name stored with the items.")

    @model_validator(mode="after")
    def _exactly_one_form(self) -> PushRequest:
        if (self.article is None) == (self.articles is None):
            raise ValueError("give exactly one of 'article' or 'articles'")
        if self.articles is not None and not self.articles:
            raise ValueError("'articles' is empty")
        for article in self.all:
            if not article.title.strip() and not article.text.strip():
                raise ValueError(f"article {article.id!r} is empty: it has neither title nor text")
        return self

    @property
    def all(self) -> list[Article]:
        return [self.article] if self.article is not None else list(self.articles or [])


class FeedbackEntry(BaseModel):
    """One verdict on one stored item."""

    item_id: int | None = Field(default=None, description="Store id (from POST /v1/items).")
    external_id: str | None = Field(default=None,
                                    description="The item's id in its source (feed guid, ...).")
    item_source: str | None = Field(default=None,
                                    description="Source name, when external ids may clash.")
    label: Literal[0, 1] = Field(description="1 investment signal, 0 not.")
    source: str = Field(default="analyst", min_length=1, max_length=100,
                        description="Label source: analyst, trend, teacher, replay, ...")
    note: str | None = Field(default=None, max_length=10_000)
    replace: bool = Field(default=False,
                          description="Replace this source's earlier, different verdict.")

    @model_validator(mode="after")
    def _one_item_reference(self) -> FeedbackEntry:
        if (self.item_id is None) == (self.external_id is None):
            raise ValueError("give exactly one of 'item_id' or 'external_id'")
        return self


class FeedbackRequest(BaseModel):
    """One verdict, or a bulk list in ``feedback``."""

    feedback: list[FeedbackEntry] | None = None
    item_id: int | None = None
    external_id: str | None = None
    item_source: str | None = None
    label: Literal[0, 1] | None = None
    source: str = Field(default="analyst", min_length=1, max_length=100)
    note: str | None = Field(default=None, max_length=10_000)
    replace: bool = False

    @model_validator(mode="after")
    def _single_or_bulk(self) -> FeedbackRequest:
        single = self.item_id is not None or self.external_id is not None
        if (self.feedback is not None) == single:
            raise ValueError("give either 'feedback' (a list) or one entry's fields")
        if self.feedback is not None and not self.feedback:
            raise ValueError("'feedback' is empty")
        if single and self.label is None:
            raise ValueError("'label' is required")
        return self

    def entries(self) -> list[FeedbackEntry]:
        if self.feedback is not None:
            return self.feedback
        return [FeedbackEntry(item_id=self.item_id, external_id=self.external_id,
                              item_source=self.item_source, label=self.label,
                              source=self.source, note=self.note, replace=self.replace)]


_FEEDBACK_STATUS = {"recorded": 200, "replaced": 200, "duplicate": 200,
                    "unknown_item": 404, "ambiguous_item": 409, "conflict": 409}


# --- the app --------------------------------------------------------------------------

def create_ingest_app(config: IngestConfig, service: IngestionService | None = None) -> FastAPI:
    """The ingestion API; its lifespan runs the service's pollers and classifier loops."""
    service = service or IngestionService(config)
    metrics = service.metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        log.info("ingestion: classifying with %s%s via %s; %d feeds, %d mailboxes, drop dir %s",
                 config.adapter, f" (shadow {config.shadow_adapter})"
                 if config.shadow_adapter else "", config.classifier_url, len(config.feeds),
                 len(config.imap), config.drop_dir)
        yield
        await service.stop()

    app = FastAPI(title="Newsletter signals: ingestion service",
                  description="Feeds and newsletters in, classified signals and online "
                  "quality out.", version="0.1.0", lifespan=lifespan)
    app.state.service = service

    def fail(status: int, kind: str, message: str):
        metrics.api_errors.labels(kind).inc()
        return error_response(status, kind, message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return fail(400, "malformed_json", "request body is not valid JSON")
        summary = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: "
                            f"{e.get('msg')}" for e in errors)
        return fail(422, "invalid_request", summary)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return fail(exc.status_code, kind, str(exc.detail))

    @app.post("/v1/items")
    async def push_items(request: PushRequest):
        """Store pushed articles (deduplicated) for classification."""
        articles = request.all
        if len(articles) > config.max_push_items:
            return fail(422, "batch_too_large",
                        f"{len(articles)} items in one request; at most {config.max_push_items}")
        answers = await service.accept_async(articles, request.source)
        return {"accepted": sum(a.status == "accepted" for a in answers),
                "duplicates": sum(a.status == "duplicate" for a in answers),
                "results": [a.__dict__ for a in answers]}

    @app.post("/v1/feedback")
    async def post_feedback(request: FeedbackRequest):
        """Record verdicts. One entry: 404 unknown item, 409 conflict, 200 otherwise
        (``outcome`` says recorded, replaced or duplicate). Bulk: 200 with one
        outcome per entry."""
        entries = request.entries()
        if len(entries) > config.max_push_items:
            return fail(422, "batch_too_large",
                        f"{len(entries)} feedback entries; at most {config.max_push_items}")
        answers = [await asyncio.to_thread(service.record_feedback, e) for e in entries]
        if request.feedback is None:
            answer = answers[0]
            status = _FEEDBACK_STATUS[answer["outcome"]]
            if status >= 400:
                kind = {"unknown_item": "item_not_found", "ambiguous_item": "ambiguous_item",
                        "conflict": "feedback_conflict"}[answer["outcome"]]
                return fail(status, kind, answer["message"])
            return answer
        counts: dict[str, int] = {}
        for answer in answers:
            counts[answer["outcome"]] = counts.get(answer["outcome"], 0) + 1
        return {"counts": counts, "results": answers}

    @app.get("/v1/items/{item_id}")
    async def get_item(item_id: int):
        """An item with its predictions (both roles) and its feedback."""
        item = await asyncio.to_thread(service.store.get_item, item_id)
        if item is None:
            return fail(404, "item_not_found", f"no stored item {item_id}")
        return item

    @app.get("/v1/signals")
    async def list_signals(limit: int = Query(50, ge=1, le=1000),
                           since: datetime | None = None):
        """Items the primary adapter flags as signals, newest prediction first."""
        return {"signals": await asyncio.to_thread(service.store.signals, since, limit)}

    @app.get("/v1/quality")
    async def quality(window_days: float | None = Query(None, gt=0)):
        """Online quality per adapter version and role (all time without a window)."""
        window = timedelta(days=window_days) if window_days else None
        stats = await asyncio.to_thread(online_quality, service.store, window)
        return {"window": window_name(window_days) if window_days else "all",
                "adapters": [s.as_dict() for _, s in sorted(stats.items())]}

    @app.get("/v1/drift")
    async def drift():
        """Drift rules as last evaluated, and retraining requests made."""
        return {"rules": [r.__dict__ for r in service.drift.results],
                "retrains": [{**r.__dict__, "dataset_dir": str(r.dataset_dir)}
                             for r in service.drift.retrains]}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        body = await asyncio.to_thread(generate_latest, metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return app


def run_ingest_server(config: IngestConfig) -> int:
    """Serve the ingestion API and run the service until interrupted."""
    import uvicorn

    app = create_ingest_app(config)
    log.info("ingestion service on http://%s:%d (store %s)", config.host, config.port,
             app.state.service.store.safe_url)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
    return 0
