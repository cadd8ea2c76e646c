"""The ingestion service: sources in, deduplicated items stored, classified exactly once.

Items reach the service two ways: it **polls** configured sources on their schedules
(``ingestion/pollers.py``: RSS/Atom feeds, IMAP mailboxes, a drop directory), and
clients **push** them (``POST /v1/items``, ``ingestion/api.py``). Each item is
first goes through the link stage when it is on (``pipeline/links.py``: a teaser's
link is followed and the article's text replaces it, within ``link_deadline_s``), then
is deduplicated against everything already stored and stored as ``pending`` with its
provenance (``ingestion/intake.py``), then classified in batches through the classification API by
adapter alias, so a promotion takes effect on the next batch
(``ingestion/classify_loop.py``). A ``shadow_adapter`` (e.g. ``candidate``) classifies
the same items; its predictions are stored and measured but never shown as signals.
Verdicts join the items in ``ingestion/feedback.py``; drift rules run on a timer.

This module only wires those parts together and runs their loops. The store
(``ingestion/store.py``) makes classification exactly-once across crashes; a
classification API outage leaves items pending and the loop retries with exponential
back-off.
"""

from __future__ import annotations

import asyncio
import logging

import httpx

from pipeline.article import Article
from pipeline.links import LinkCounters, LinkEnricher
from ingestion.classify_loop import ClassifyLoop
from ingestion.config import FeedSourceConfig, ImapSourceConfig, IngestConfig
from ingestion.drift import DriftMonitor
from ingestion.feedback import Feedback
from ingestion.intake import Accepted, Intake
from ingestion.label_shift import SignalRateCollector
from ingestion.metrics import IngestMetrics, LinkMetricsCollector
from ingestion.online_metrics import OnlineQualityCollector
from ingestion.pollers import Pollers, every
from ingestion.schema import Role
from ingestion.promotion import PromotionGate
from ingestion.store import Store

log = logging.getLogger(__name__)


class IngestionService:
    """The parts of one ingestion process and the loops that drive them:

    * ``intake``    dedupe and store (:class:`~ingestion.intake.Intake`)
    * ``pollers``   feeds, mailboxes, drop directory (:class:`~ingestion.pollers.Pollers`)
    * ``classify``  the classify loop per role (:class:`~ingestion.classify_loop.ClassifyLoop`)
    * ``feedback``  verdicts and label sources (:class:`~ingestion.feedback.Feedback`)
    * ``drift``     drift rules and retraining requests
    * ``promotion`` the gate that promotes or rolls back the shadow candidate
    """

    def __init__(self, config: IngestConfig, store: Store | None = None):
        self.config = config
        self.store = store or Store(config.database_url, config.label_priority)
        self.metrics = IngestMetrics()
        self.intake = Intake(self.store, self.metrics, config.dedupe_threshold,
                             config.dedupe_num_perm, shadow=config.shadow_adapter is not None)
        self.links: LinkEnricher | None = None
        """The link stage, opened by :meth:`start` when ``config.links`` is set."""
        self.link_counters = LinkCounters()
        self.metrics.registry.register(LinkMetricsCollector(self.link_counters))
        self.pollers = Pollers(self.metrics, self.accept_async, config.drop_dir,
                               links_on=config.links is not None)
        self.classify = ClassifyLoop(config, self.store, self.metrics)
        self.metrics.registry.register(SignalRateCollector(self.classify.signal_rates))
        self.feedback = Feedback(self.store, self.metrics)
        self.quality = OnlineQualityCollector(self.store, config.metric_windows_days,
                                              config.metrics_cache_s)
        self.metrics.registry.register(self.quality)
        self.drift = DriftMonitor(self.store, config.drift, self.metrics.registry)
        self.promotion = (PromotionGate(config, self.store, self.metrics)
                          if config.promotion.enabled else None)
        """The promotion gate (``promotion.enabled``; needs a ``shadow_adapter``)."""
        self._tasks: list[asyncio.Task] = []

    # --- the parts' entry points, for the API, the CLI and tests -----------------------

    def accept(self, articles: list[Article], source: str) -> list[Accepted]:
        """Deduplicate and store ``articles`` from ``source``; one answer per article.
        Synchronous, without the link stage (that needs the event loop: use
        :meth:`accept_async`)."""
        return self.intake.accept(articles, source)

    async def accept_async(self, articles: list[Article], source: str) -> list[Accepted]:
        """The link stage (when on), then :meth:`accept` off the event loop; wakes the
        classify loops on new items.

        With the link stage on, the items wait for their pages at most
        ``link_deadline_s``; what is not read by then is stored with its own text and
        ``fetch_status="deadline"`` (the stored provenance says so)."""
        provenances = None
        if self.links is not None and articles:
            results = await self.links.enrich(articles, deadline_s=self.config.link_deadline_s)
            articles = [r.article for r in results]
            provenances = [r.provenance for r in results]
        answers = await asyncio.to_thread(self.intake.accept, articles, source, provenances)
        if any(a.status == "accepted" for a in answers):
            self.classify.work.set()
        return answers

    async def poll_feed(self, feed: FeedSourceConfig) -> int:
        return await self.pollers.poll_feed(feed)

    async def poll_imap(self, mailbox: ImapSourceConfig) -> int:
        return await self.pollers.poll_imap(mailbox)

    async def scan_drop_dir(self) -> int:
        return await self.pollers.scan_drop_dir()

    async def classify_pending(self, role: Role) -> int:
        return await self.classify.classify_pending(role)

    async def retry_links(self) -> int:
        """Fetch once more the pages of link-only items still waiting for theirs
        (``awaiting_link``, :meth:`ingestion.intake.Intake.retry_links`); wakes the
        classify loops when some became pending."""
        if self.links is None:
            return 0
        filled = await self.intake.retry_links(self.links, self.config.link_max_attempts,
                                               self.config.link_deadline_s)
        if filled:
            self.classify.work.set()
        return filled

    # --- lifecycle ------------------------------------------------------------------

    async def _drift_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.drift.interval_s)
            try:
                await asyncio.to_thread(self.drift.check)
            except Exception:
                log.exception("drift evaluation failed")

    async def _promotion_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.promotion.interval_s)
            try:
                await self.promotion.evaluate()
            except Exception:
                log.exception("promotion gate evaluation failed")

    async def start(self) -> None:
        """Open the API client and start every loop: classify per role, one poller per
        source, the drop directory, the link retries (with the link stage on), drift."""
        self.classify.client = httpx.AsyncClient(base_url=self.config.classifier_url,
                                                 timeout=self.config.classify_timeout_s)
        if self.config.links is not None:
            self.links = LinkEnricher(self.config.links, self.link_counters)
        loops = [self.classify.run("primary")]
        if self.config.shadow_adapter is not None:
            loops.append(self.classify.run("shadow"))
        for feed in self.config.feeds:
            loops.append(every(feed.interval_s, lambda f=feed: self.poll_feed(f),
                               f"feed {feed.name}"))
        for mailbox in self.config.imap:
            loops.append(every(mailbox.interval_s, lambda m=mailbox: self.poll_imap(m),
                               f"IMAP {mailbox.source}"))
        if self.config.drop_dir is not None:
            self.config.drop_dir.mkdir(parents=True, exist_ok=True)
            loops.append(every(self.config.drop_interval_s, self.scan_drop_dir,
                               "drop directory"))
        if self.links is not None:
            loops.append(every(self.config.link_retry_interval_s, self.retry_links,
                               "link retry"))
        loops.append(self._drift_loop())
        if self.promotion is not None:
            loops.append(self._promotion_loop())
        self._tasks = [asyncio.create_task(loop) for loop in loops]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.classify.client is not None:
            await self.classify.client.aclose()
        if self.links is not None:
            await self.links.aclose()
            self.links = None
