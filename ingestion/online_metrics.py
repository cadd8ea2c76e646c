"""Online quality: precision, recall and friends from real outcomes, per adapter version.

Labels arrive late (an analyst's verdict, a trend that shows months later), so quality
is joined in the store: every stored prediction against its item's effective label
(``ingestion/store.py``). From those joins come

* **raw counters**, all-time, by adapter version and role:
  ``signals_ingest_labelled_predictions_total{adapter,role,outcome=tp|fp|fn|tn}`` and
  ``signals_ingest_predictions_total{adapter,role,label}``. They are read from the
  store, so they survive restarts and every replica reports the same totals; PromQL
  derives rates and precision over any range from them, e.g.
  ``sum by (adapter)(increase(X{outcome="tp"}[7d]))
  / sum by (adapter)(increase(X{outcome=~"tp|fp"}[7d]))``.
  (A label that is later *replaced* can lower a count once; Prometheus treats that as
  a counter reset.)
* **gauges per window** (predictions made in the last 1, 7, 30 days):
  precision, recall, F1, predicted-positive rate, label coverage, mean latency from
  publication to prediction, and the counts behind them.

A value that is undefined (no predicted positives for precision, no labelled
positives for recall) is left out rather than exported as 0 or NaN.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ingestion.store import ROLES, ConfusionRow, Store, utcnow


@dataclass
class QualityStats:
    """Confusion counts and derived rates of one adapter version in one role."""

    adapter: str
    role: str
    predictions: int = 0
    predicted_positive: int = 0
    labelled: int = 0
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    latency_sum_s: float = 0.0
    latency_count: int = 0

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def f1(self) -> float | None:
        # 2PR/(P+R) written on counts: also defined (0) when no prediction is positive
        # but some label is, where precision itself is undefined.
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else None

    @property
    def predicted_positive_rate(self) -> float | None:
        return self.predicted_positive / self.predictions if self.predictions else None

    @property
    def label_coverage(self) -> float | None:
        """Share of the predictions whose item has a label by now."""
        return self.labelled / self.predictions if self.predictions else None

    @property
    def mean_publication_latency_s(self) -> float | None:
        return self.latency_sum_s / self.latency_count if self.latency_count else None

    def as_dict(self) -> dict:
        return {"adapter": self.adapter, "role": self.role, "predictions": self.predictions,
                "predicted_positive": self.predicted_positive, "labelled": self.labelled,
                "tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn,
                "precision": self.precision, "recall": self.recall, "f1": self.f1,
                "predicted_positive_rate": self.predicted_positive_rate,
                "label_coverage": self.label_coverage,
                "mean_publication_latency_s": self.mean_publication_latency_s}


def quality_from_confusion(rows: list[ConfusionRow]) -> dict[tuple[str, str], QualityStats]:
    """Fold grouped confusion rows into stats keyed by (adapter version, role)."""
    stats: dict[tuple[str, str], QualityStats] = {}
    for row in rows:
        s = stats.setdefault((row.adapter, row.role), QualityStats(row.adapter, row.role))
        s.predictions += row.count
        s.predicted_positive += row.count if row.predicted == 1 else 0
        s.latency_sum_s += row.latency_sum_s
        s.latency_count += row.latency_count
        if row.actual is None:
            continue
        s.labelled += row.count
        if row.predicted == 1 and row.actual == 1:
            s.tp += row.count
        elif row.predicted == 1:
            s.fp += row.count
        elif row.actual == 1:
            s.fn += row.count
        else:
            s.tn += row.count
    return stats


def online_quality(store: Store, window: timedelta | None,
                   now: datetime | None = None) -> dict[tuple[str, str], QualityStats]:
    """Quality of every adapter version over predictions made in the last ``window``
    (None: all time)."""
    since = None if window is None else (now or utcnow()) - window
    return quality_from_confusion(store.confusion(since=since))


def window_name(days: float) -> str:
    """Value of the ``window`` label: ``1d``, ``7d``, ``0.5d``."""
    return f"{days:g}d"


@dataclass
class _Snapshot:
    taken_at: float
    all_time: dict[tuple[str, str], QualityStats]
    windows: dict[str, dict[tuple[str, str], QualityStats]]
    pending: dict[str, int]
    items: int


_WINDOW_GAUGES = (
    # (metric suffix, help, attribute of QualityStats)
    ("precision", "Online precision of predictions made in the window", "precision"),
    ("recall", "Online recall of predictions made in the window", "recall"),
    ("f1", "Online F1 of predictions made in the window", "f1"),
    ("predicted_positive_rate", "Share of the window's predictions labelled signal",
     "predicted_positive_rate"),
    ("label_coverage", "Share of the window's predictions whose item has a label",
     "label_coverage"),
    ("publication_latency_seconds",
     "Mean time from publication to prediction over the window's predictions",
     "mean_publication_latency_s"),
    ("predictions", "Predictions made in the window", "predictions"),
    ("labelled_predictions", "Predictions made in the window whose item has a label",
     "labelled"),
)


class OnlineQualityCollector(Collector):
    """Prometheus collector reading online quality from the store at scrape time.

    Results are cached for ``cache_s`` so several scrapers (or dashboards refreshing)
    do not each run the grouped queries.
    """

    def __init__(self, store: Store, windows_days: list[float], cache_s: float = 2.0):
        self.store = store
        self.windows_days = list(windows_days)
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None

    def snapshot(self) -> _Snapshot:
        with self._lock:
            fresh = self._snapshot is not None and (
                time.monotonic() - self._snapshot.taken_at < self.cache_s)
            if not fresh:
                now = utcnow()
                self._snapshot = _Snapshot(
                    taken_at=time.monotonic(),
                    all_time=online_quality(self.store, None),
                    windows={window_name(d): online_quality(self.store, timedelta(days=d), now)
                             for d in self.windows_days},
                    pending={role: self.store.pending_count(role) for role in ROLES},
                    items=self.store.item_count())
            return self._snapshot

    def collect(self):
        snap = self.snapshot()
        outcomes = CounterMetricFamily(
            "signals_ingest_labelled_predictions",
            "Stored predictions whose item has a label, by adapter version, role and "
            "outcome (tp, fp, fn, tn); all time, from the store",
            labels=["adapter", "role", "outcome"])
        stored = CounterMetricFamily(
            "signals_ingest_predictions",
            "Stored predictions by adapter version, role and predicted label; all time",
            labels=["adapter", "role", "label"])
        for (adapter, role), s in sorted(snap.all_time.items()):
            for outcome in ("tp", "fp", "fn", "tn"):
                outcomes.add_metric([adapter, role, outcome], getattr(s, outcome))
            stored.add_metric([adapter, role, "1"], s.predicted_positive)
            stored.add_metric([adapter, role, "0"], s.predictions - s.predicted_positive)
        yield outcomes
        yield stored

        for suffix, help_text, attribute in _WINDOW_GAUGES:
            gauge = GaugeMetricFamily(f"signals_ingest_online_{suffix}", help_text,
                                      labels=["adapter", "role", "window"])
            for window, stats in snap.windows.items():
                for (adapter, role), s in sorted(stats.items()):
                    value = getattr(s, attribute)
                    if value is not None:
                        gauge.add_metric([adapter, role, window], value)
            yield gauge

        pending = GaugeMetricFamily("signals_ingest_pending_items",
                                    "Stored items waiting for a prediction, by role",
                                    labels=["role"])
        for role, count in snap.pending.items():
            pending.add_metric([role], count)
        yield pending
        yield GaugeMetricFamily("signals_ingest_stored_items", "Items in the store",
                                value=snap.items)
