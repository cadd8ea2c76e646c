"""The classify loop: pending items go to the classification API in batches, by adapter
alias, and every answer is stored exactly once.

One loop per role: ``primary`` (what analysts see) and, when configured, ``shadow``
(a candidate adapter, measured but never shown). An API that cannot answer now leaves
the items pending and is retried with exponential back-off (tenacity); a batch the API
refuses (4xx) is retried item by item, so one bad item is rejected alone. A batch that
gets a 5xx is also retried item by item: when some items are answered and others fail
alone (or every item fails but a canary article is answered), those failures are the
items' own and are counted; ``classify_max_failures`` of them put an item in the dead
letter (``dead_letter``), so one item that breaks the backend cannot hold back the
queue. A 5xx for the canary too is an outage: nothing is counted, everything stays
pending.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
from pydantic import ValidationError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from ingestion.config import IngestConfig
from ingestion.label_shift import SignalRateTracker
from ingestion.metrics import IngestMetrics
from ingestion.schema import Role
from ingestion.store import NewPrediction, Store, StoredItem
from pipeline.article import Article
from serve.schemas import ArticleResult, ClassifyRequest, ClassifyResponse

log = logging.getLogger(__name__)


CANARY = Article(id=0, title="Canary article of the ingestion service",
                 text="A short, plain article the classification API answers when it is up.")
"""Sent when every item of a failed batch also fails alone (store ids start at 1)."""


class RetryableError(RuntimeError):
    """The classification API could not answer now (down, 5xx, timeout, no adapter).
    ``unreachable``: no answer at all (the request never got one), as data for the
    metrics' ``unavailable`` outcome."""

    def __init__(self, message: str, unreachable: bool = False):
        super().__init__(message)
        self.unreachable = unreachable


class ServerError(RetryableError):
    """The classification API answered 5xx or 408: down for everyone, or for this item."""


class RejectedError(RuntimeError):
    """The classification API refused the request itself (4xx other than 404)."""


class ClassifyLoop:
    """Classifies pending items of the store through the classification API."""

    def __init__(self, config: IngestConfig, store: Store, metrics: IngestMetrics):
        self.config, self.store, self.metrics = config, store, metrics
        self.work = asyncio.Event()
        """Set when new items were stored: wakes an idle loop before ``idle_poll_s``."""
        self.client: httpx.AsyncClient | None = None
        self.signal_rates = SignalRateTracker(config.label_shift_window,
                                              config.label_shift_min_items)
        """The stream's signal rate per version, from the answers (label shift)."""

    def adapter_for(self, role: Role) -> str | None:
        return self.config.adapter if role == "primary" else self.config.shadow_adapter

    async def _request(self, role: Role, batch: list[StoredItem]) -> list[ArticleResult]:
        """One request to the classification API for ``batch``; its ``results``."""
        # The store id travels as the article id: answers map back unambiguously.
        return await self._post(role, [item.article.model_copy(update={"id": item.id})
                                       for item in batch])

    async def _post(self, role: Role, articles: list[Article]) -> list[ArticleResult]:
        """One request to the classification API, in its own request and response
        models (``serve/schemas.py``); its ``results``."""
        rate = self.signal_rates.for_request(role) if self.config.label_shift else None
        try:
            request = ClassifyRequest(
                articles=articles, adapter=self.adapter_for(role),
                threshold=self.config.threshold, signal_rate=rate,
                # All-or-nothing: a refused batch is retried item by item below, which
                # records the reason per item.
                strict=True)
        except ValidationError as error:  # what the API would answer 422 for
            raise RejectedError(f"not a valid classification request: {error}") from error
        body = request.model_dump(mode="json", by_alias=True, exclude_unset=True)
        headers = ({"Authorization": f"Bearer {self.config.classifier_token}"}
                   if self.config.classifier_token else None)
        started = time.perf_counter()
        try:
            response = await self.client.post("/v1/classify", json=body, headers=headers)
        except httpx.HTTPError as error:
            raise RetryableError(f"classification API unreachable: {type(error).__name__}: "
                                 f"{error}", unreachable=True) from error
        self.metrics.classify_latency.labels(role).observe(time.perf_counter() - started)
        if response.status_code in (401, 403):
            # A token problem is the deployment's, not the items': keep them pending.
            raise RetryableError(f"classification API refused our token "
                                 f"({response.status_code}): {response.text[:300]}")
        if response.status_code >= 500 or response.status_code == 408:
            raise ServerError(f"classification API answered {response.status_code}: "
                              f"{response.text[:300]}")
        if response.status_code in (404, 429):
            # 404 is adapter_not_found: an alias not set yet is a deployment state that
            # a promotion fixes, not a property of the items.
            raise RetryableError(f"classification API answered {response.status_code}: "
                                 f"{response.text[:300]}")
        if response.status_code >= 400:
            raise RejectedError(f"classification API refused the request "
                                f"({response.status_code}): {response.text[:300]}")
        try:
            answer = ClassifyResponse.model_validate_json(response.content)
        except ValidationError as error:
            raise RetryableError(f"classification API answered something that is not a "
                                 f"ClassifyResponse: {error}") from error
        results = [r for r in answer.results if isinstance(r, ArticleResult)]
        if len(results) != len(answer.results):  # a strict request has no error entries
            raise RetryableError("classification API answered errors to a strict request")
        if sorted(r.id for r in results) != sorted(a.id for a in articles):
            raise RetryableError("classification API answered for other items than asked")
        return results

    def _store_results(self, role: Role, results: list[ArticleResult]) -> int:
        return self.store.record_predictions(role, [
            NewPrediction(item_id=r.id, requested=r.requested, adapter=r.adapter,
                          p_signal=r.p_signal, threshold=r.threshold, label=r.label,
                          truncated=r.truncated) for r in results])

    async def _reject(self, role: Role, item_id: int, error: RejectedError) -> None:
        log.error("item %d rejected by the classification API: %s", item_id, error)
        self.metrics.rejected.labels(role).inc()
        await asyncio.to_thread(self.store.record_failure, role, [item_id], str(error), True)

    async def _isolate(self, role: Role, batch: list[StoredItem],
                       error: ServerError) -> list[ArticleResult]:
        """After a 5xx for ``batch``: the answers of its items sent one by one. Items
        that fail alone while others are answered (or, when none is, while the API
        answers :data:`CANARY`) count a failure of their own and reach the dead letter
        after ``classify_max_failures``; when the canary fails too, the API is down: the
        items stay pending and ``error`` is raised for the back-off."""
        results: list[ArticleResult] = []
        failed: dict[int, str] = {}
        for item in batch if len(batch) > 1 else []:
            try:
                results += await self._request(role, [item])
            except ServerError as single_error:
                failed[item.id] = str(single_error)
            except RejectedError as single_error:
                await self._reject(role, item.id, single_error)
        if len(batch) == 1:
            failed[batch[0].id] = str(error)
        if not results and failed and await self._answers_canary(role):
            log.warning("the classification API answers a canary article but not %d of "
                        "the queued items", len(failed))
        elif not results:  # nothing answered: an outage, not the items
            self.metrics.classifier_up.set(0)
            await asyncio.to_thread(self.store.record_failure, role, [i.id for i in batch],
                                    str(error), False)
            raise error
        for item_id, message in failed.items():
            dead = await asyncio.to_thread(self.store.record_item_failure, role, [item_id],
                                           message, self.config.classify_max_failures)
            if dead:
                log.error("item %d: classification failed on it alone %d times; in the dead "
                          "letter (requeue with POST /v1/dead-letters/requeue): %s", item_id,
                          self.config.classify_max_failures, message)
                self.metrics.dead_lettered.labels(role).inc()
            else:
                log.warning("item %d: classification failed on it alone: %s", item_id, message)
        return results

    async def _answers_canary(self, role: Role) -> bool:
        """Whether the API classifies :data:`CANARY` (not stored) with ``role``'s
        adapter: it tells an item that fails alone from an API that fails on all."""
        try:
            await self._post(role, [CANARY])
        except (RetryableError, RejectedError):
            return False
        return True

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
            results = await self._request(role, batch)
        except ServerError as error:
            self.metrics.classify_requests.labels(role, "error").inc()
            results = await self._isolate(role, batch, error)
        except RetryableError as error:
            outcome = "unavailable" if error.unreachable else "error"
            self.metrics.classify_requests.labels(role, outcome).inc()
            self.metrics.classifier_up.set(0)
            await asyncio.to_thread(self.store.record_failure, role, [i.id for i in batch],
                                    str(error), False)
            raise
        except RejectedError as error:
            self.metrics.classify_requests.labels(role, "rejected").inc()
            if len(batch) == 1:
                await self._reject(role, batch[0].id, error)
                return 0
            results = []
            for item in batch:
                try:
                    results += await self._request(role, [item])
                except RejectedError as single_error:
                    await self._reject(role, item.id, single_error)
        self.metrics.classify_requests.labels(role, "ok").inc()
        self.metrics.classifier_up.set(1)
        stored = await asyncio.to_thread(self._store_results, role, results)
        self.signal_rates.observe(role, results)
        self.metrics.classified.labels(role).inc(stored)
        by_id = {item.id: item for item in batch}
        now = time.time()
        for result in results:
            published = by_id[result.id].published_at
            if published is not None:
                self.metrics.publication_latency.labels(role).observe(
                    max(0.0, now - published.timestamp()))
        return stored

    async def _classify_with_back_off(self, role: Role) -> int:
        """:meth:`classify_pending`, retried while the API cannot answer: waits
        ``retry_initial_s``, doubled per failure up to ``retry_max_s``."""

        def log_retry(state: RetryCallState) -> None:
            log.warning("%s classification failed (%s); items stay pending, retry in "
                        "%.1f s", role, state.outcome.exception(), state.next_action.sleep)

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(RetryableError),
            wait=wait_exponential(multiplier=self.config.retry_initial_s,
                                  max=self.config.retry_max_s),
            before_sleep=log_retry, reraise=True)
        async for attempt in retrying:
            with attempt:
                stored = await self.classify_pending(role)
        return stored

    async def run(self, role: Role) -> None:
        """Classify ``role``'s pending items until cancelled; idle, wait for new work."""
        while True:
            try:
                stored = await self._classify_with_back_off(role)
            except Exception:  # the loop must outlive a bug or a store hiccup
                log.exception("%s classification loop error", role)
                await asyncio.sleep(self.config.retry_initial_s)
                continue
            if stored == 0:
                self.work.clear()
                try:
                    await asyncio.wait_for(self.work.wait(), self.config.idle_poll_s)
                except TimeoutError:
                    pass
