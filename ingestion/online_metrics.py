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

Labels come days late, so each window also gets an **estimate before labels arrive**
(confidence-based performance estimation, CBPE in NannyML's words): with a calibrated
P(signal) = p, a prediction of "signal" is a true positive with probability p and a
false positive with 1 - p, a prediction of "not signal" a false negative with p and a
true negative with 1 - p, so summing p over the stored predictions gives the expected
confusion matrix without a single label (:class:`ExpectedConfusion`). Exported as
``signals_ingest_estimated_{precision,recall,f1}{adapter,role,window,items}``:

* ``items="unlabelled"``: the window's predictions that have no label yet;
* ``items="all"``: the best current figure for the whole window, the measured counts
  of the labelled predictions plus the expected counts of the unlabelled ones;
* ``items="labelled"``: the estimate for the predictions that do have labels, so it can
  be held against the measurement: ``signals_ingest_estimation_error_{precision,
  recall,f1}{adapter,role,window}`` = estimated - measured on those same predictions.

The estimate is only as good as the adapter's calibration on today's items (an
uncalibrated adapter's P(signal) overstates it; the error gauge shows by how much).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ingestion.schema import ROLES, utcnow
from ingestion.store import ConfusionRow, Store


def rates_from_counts(tp: float, fp: float, fn: float) -> dict[str, float | None]:
    """Precision, recall and F1 from (possibly expected) counts; None where undefined."""
    return {"precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None,
            # 2PR/(P+R) on counts: 0, not undefined, when nothing is predicted positive
            # but some label is
            "f1": 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else None}


@dataclass
class ExpectedConfusion:
    """The confusion matrix expected from P(signal) alone (CBPE): each prediction adds
    its p to TP (predicted signal) or FN (predicted not signal) and 1 - p to FP or TN."""

    predictions: int = 0
    tp: float = 0.0
    fp: float = 0.0
    fn: float = 0.0
    tn: float = 0.0

    def add(self, predicted: int, count: int, p_signal_sum: float) -> None:
        """``count`` predictions of label ``predicted`` whose P(signal) sum to
        ``p_signal_sum``."""
        self.predictions += count
        if predicted == 1:
            self.tp += p_signal_sum
            self.fp += count - p_signal_sum
        else:
            self.fn += p_signal_sum
            self.tn += count - p_signal_sum

    def rates(self) -> dict[str, float | None]:
        return rates_from_counts(self.tp, self.fp, self.fn)

    def as_dict(self) -> dict:
        return {"predictions": self.predictions, "tp": self.tp, "fp": self.fp,
                "fn": self.fn, "tn": self.tn, **self.rates()}


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
    # CBPE: expected counts of the predictions without a label, and of those with one
    expected_unlabelled: ExpectedConfusion = field(default_factory=ExpectedConfusion)
    expected_labelled: ExpectedConfusion = field(default_factory=ExpectedConfusion)

    @property
    def precision(self) -> float | None:
        return rates_from_counts(self.tp, self.fp, self.fn)["precision"]

    @property
    def recall(self) -> float | None:
        return rates_from_counts(self.tp, self.fp, self.fn)["recall"]

    @property
    def f1(self) -> float | None:
        return rates_from_counts(self.tp, self.fp, self.fn)["f1"]

    def estimated(self, items: str) -> dict[str, float | None]:
        """Estimated precision, recall and F1 over the ``unlabelled`` predictions, the
        ``labelled`` ones (to compare with the measurement) or ``all`` of them (measured
        counts where labelled, expected counts where not)."""
        if items == "unlabelled":
            return self.expected_unlabelled.rates()
        if items == "labelled":
            return self.expected_labelled.rates()
        if items == "all":
            e = self.expected_unlabelled
            return rates_from_counts(self.tp + e.tp, self.fp + e.fp, self.fn + e.fn)
        raise ValueError(f"items must be unlabelled, labelled or all, not {items!r}")

    def estimation_error(self) -> dict[str, float | None]:
        """Estimated minus measured, on the labelled predictions (None where either is
        undefined)."""
        measured = rates_from_counts(self.tp, self.fp, self.fn)
        return {k: (v - measured[k] if v is not None and measured[k] is not None else None)
                for k, v in self.expected_labelled.rates().items()}

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
                "mean_publication_latency_s": self.mean_publication_latency_s,
                "estimated": {items: self.estimated(items)
                              for items in ("unlabelled", "all", "labelled")},
                "expected_unlabelled": self.expected_unlabelled.as_dict(),
                "estimation_error": self.estimation_error()}


def quality_from_confusion(rows: list[ConfusionRow]) -> dict[tuple[str, str], QualityStats]:
    """Fold grouped confusion rows into stats keyed by (adapter version, role)."""
    stats: dict[tuple[str, str], QualityStats] = {}
    for row in rows:
        s = stats.setdefault((row.adapter, row.role), QualityStats(row.adapter, row.role))
        s.predictions += row.count
        s.predicted_positive += row.count if row.predicted == 1 else 0
        s.latency_sum_s += row.latency_sum_s
        s.latency_count += row.latency_count
        expected = s.expected_unlabelled if row.actual is None else s.expected_labelled
        expected.add(row.predicted, row.count, row.p_signal_sum)
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

        for metric in ("precision", "recall", "f1"):
            estimated = GaugeMetricFamily(
                f"signals_ingest_estimated_{metric}",
                f"Online {metric} estimated from the stored P(signal) (CBPE) over the "
                "window's predictions: items=unlabelled (no label yet), all (measured where "
                "labelled, expected elsewhere), labelled (to compare with the measurement)",
                labels=["adapter", "role", "window", "items"])
            error = GaugeMetricFamily(
                f"signals_ingest_estimation_error_{metric}",
                f"Estimated minus measured {metric} on the window's labelled predictions",
                labels=["adapter", "role", "window"])
            for window, stats in snap.windows.items():
                for (adapter, role), s in sorted(stats.items()):
                    for items in ("unlabelled", "all", "labelled"):
                        value = s.estimated(items)[metric]
                        if value is not None:
                            estimated.add_metric([adapter, role, window, items], value)
                    value = s.estimation_error()[metric]
                    if value is not None:
                        error.add_metric([adapter, role, window], value)
            yield estimated
            yield error

        pending = GaugeMetricFamily("signals_ingest_pending_items",
                                    "Stored items waiting for a prediction, by role",
                                    labels=["role"])
        for role, count in snap.pending.items():
            pending.add_metric([role], count)
        yield pending
        yield GaugeMetricFamily("signals_ingest_stored_items", "Items in the store",
                                value=snap.items)
