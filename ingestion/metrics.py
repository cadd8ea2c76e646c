"""The ingestion service's own Prometheus counters (one registry per service instance).

Store-derived gauges (online precision/recall, counts per state) are not here: they
come from ``ingestion/online_metrics.py`` and ``ingestion/drift.py`` at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from pipeline.links import LinkCounters


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
        self.items_refused = Counter(
            "signals_ingest_items_refused",
            "Items not stored because no store could hold them (ingestion/schema.py "
            "storage_problem: date_range, id_length, source_length, nul_character; "
            "store_error), the rest of their batch stored, by source and reason",
            ["source", "reason"], registry=r)
        self.link_waits = Counter(
            "signals_ingest_link_waits",
            "Items whose only content is their link and whose page was not read, by "
            "outcome: waiting (stored, to be retried), retry_failed (a retry failed, it "
            "waits on), filled (its page was read: classified from it), skipped (never "
            "classified; the reason is the item's last_error)", ["outcome"], registry=r)
        self.polls = Counter("signals_ingest_source_polls",
                             "Source polls by outcome (ok, error, deferred: its server's "
                             "Retry-After has not passed)", ["source", "outcome"],
                             registry=r)
        self.source_errors = Counter(
            "signals_ingest_source_errors",
            "Source problems by kind: timeout, http_status, connection, blocked_address, "
            "too_large, invalid_url, malformed, not_a_feed, no_items, unreadable", ["source", "kind"], registry=r)
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
        self.dead_lettered = Counter(
            "signals_ingest_dead_lettered_items",
            "Items taken out of the queue after classify_max_failures failures of their "
            "own (5xx on the item alone), by role", ["role"], registry=r)
        self.promotions = Counter(
            "signals_ingest_promotions",
            "Decisions of the promotion gate: promote, rollback, keep, not_enough_labels",
            ["decision"], registry=r)
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
            "conflict, unknown_item, ambiguous_item, forbidden_source)", ["source", "outcome"],
            registry=r)
        self.api_errors = Counter("signals_ingest_api_errors",
                                  "Ingestion API errors by kind", ["kind"], registry=r)



class LinkMetricsCollector(Collector):
    """The link stage's counts (:class:`pipeline.links.LinkCounters`) as Prometheus
    counters, read at scrape time: the stage counts in its own worker threads."""

    def __init__(self, counters: LinkCounters):
        self.counters = counters

    def collect(self) -> Iterator[Metric]:
        snapshot = self.counters.snapshot()
        outcomes = CounterMetricFamily(
            "signals_ingest_link_fetches",
            "Links resolved by the link stage, by host and outcome (ok, not_needed, "
            "no_link, robots_disallowed, http_error, rate_limited, timeout, too_large, "
            "deadline, ...; see pipeline/links.py)", labels=["host", "status"])
        for row in snapshot["outcomes"]:
            outcomes.add_metric([row["host"], row["status"]], row["count"])
        yield outcomes
        requests = CounterMetricFamily(
            "signals_ingest_link_requests",
            "HTTP requests of the link stage by host and what the cache did (network, "
            "revalidated, cache_hit, robots)", labels=["host", "kind"])
        for row in snapshot["requests"]:
            requests.add_metric([row["host"], row["kind"]], row["count"])
        yield requests
