"""The signal rate of the live stream, per adapter version, estimated without labels.

A version's calibrated P(signal) holds the signal rate of its validation window; the
newsletters it now reads may carry another (Reuters: 17% in training, 16% in April,
28% in June). :class:`SignalRateTracker` keeps the unshifted calibrated P of the last
``window`` predictions of each (version, role) and estimates the stream's rate from
them by EM (:func:`classify.calibration.estimate_prior`, Saerens et al. 2002, which
assumes P(article | label) unchanged: label shift). It is exported as
``signals_ingest_estimated_signal_rate{adapter,role}`` (with the number of predictions
behind it) and, when ``label_shift`` is on in the service's config, sent with each
classify request as ``signal_rate`` so the API prior-shifts P and cuts it at the
version's threshold on the shifted P.

The window is in memory: after a restart it fills again from the next predictions
(``min_items`` of them before the first estimate).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from serve.schemas import ArticleResult
from classify.calibration import estimate_prior, prior_shift


class SignalRateTracker:
    """Sliding windows of unshifted calibrated P per (adapter version, role)."""

    def __init__(self, window: int = 500, min_items: int = 200):
        self.window, self.min_items = window, min_items
        self._p: dict[tuple[str, str], deque[float]] = {}
        self._fitted: dict[tuple[str, str], float] = {}
        self._latest: dict[str, str] = {}  # role -> the version that answered last
        self._lock = threading.Lock()

    def observe(self, role: str, results: Iterable[ArticleResult]) -> None:
        """Add the API's answers of one batch. Answers without a calibration (the base
        model, older versions) are ignored; shifted ones are shifted back to the
        version's fitting rate first."""
        with self._lock:
            for r in results:
                if r.fitted_rate is None:
                    continue
                p = r.p_signal
                if r.signal_rate is not None:
                    p = prior_shift(p, r.signal_rate, r.fitted_rate)
                key = (r.adapter, role)
                self._p.setdefault(key, deque(maxlen=self.window)).append(p)
                self._fitted[key] = r.fitted_rate
                self._latest[role] = r.adapter

    def estimate(self, adapter: str, role: str) -> float | None:
        """The estimated signal rate of the last ``window`` predictions of ``adapter`` in
        ``role``; None until ``min_items`` are in."""
        with self._lock:
            found = list(self._p.get((adapter, role), ()))
            fitted = self._fitted.get((adapter, role))
        if fitted is None or len(found) < self.min_items:
            return None
        return estimate_prior(found, fitted)

    def for_request(self, role: str) -> float | None:
        """The rate to send with the next request of ``role``: the estimate of the
        version that answered its last batch (an alias moving to a new version starts
        unshifted until that version has ``min_items`` predictions)."""
        adapter = self._latest.get(role)
        return None if adapter is None else self.estimate(adapter, role)

    def snapshot(self) -> list[tuple[str, str, float, int]]:
        """``(adapter, role, estimated rate, predictions)`` of every estimable window."""
        with self._lock:
            keys = list(self._p)
            sizes = {k: len(self._p[k]) for k in keys}
        out = []
        for adapter, role in keys:
            rate = self.estimate(adapter, role)
            if rate is not None:
                out.append((adapter, role, rate, sizes[(adapter, role)]))
        return out


class SignalRateCollector(Collector):
    """The tracker's estimates as gauges, read at scrape time."""

    def __init__(self, tracker: SignalRateTracker):
        self.tracker = tracker

    def collect(self) -> Iterator[Metric]:
        rate = GaugeMetricFamily(
            "signals_ingest_estimated_signal_rate",
            "Signal rate of the live stream estimated from the unshifted calibrated "
            "P(signal) of the latest predictions of each adapter version (EM, label shift)",
            labels=["adapter", "role"])
        count = GaugeMetricFamily(
            "signals_ingest_estimated_signal_rate_items",
            "Predictions the estimated signal rate is computed from", labels=["adapter", "role"])
        for adapter, role, value, items in self.tracker.snapshot():
            rate.add_metric([adapter, role], value)
            count.add_metric([adapter, role], items)
        yield rate
        yield count
