"""Online precision/recall estimated from P(signal) before labels arrive (CBPE), over the
real ingestion API on a real store: exact expected counts for known probabilities, an
estimate that matches the later measurement when P(signal) is calibrated, and an error
gauge that shows it when it is not."""

from __future__ import annotations

import random

import httpx
import pytest

from ingestion.api import create_ingest_app
from ingestion.config import IngestConfig
from ingestion.store import NewPrediction, Store
from pipeline.article import Article
from pipeline.dedupe import content_hash
from tests.conftest import serve_app
from tests.ingestion.test_ingest_support import sample, scrape


def _predicted(store: Store, probabilities: list[float], threshold: float = 0.5,
               adapter: str = "v1") -> list[int]:
    """Store one item per probability with its prediction at ``threshold``."""
    ids = []
    for i, p in enumerate(probabilities):
        article = Article(id=f"e{i}", title=f"Item {i}", text=f"Story number {i}.")
        ids.append(store.insert_item(article, "test", content_hash(article), None,
                                     shadow=False)[0])
    store.record_predictions("primary", [
        NewPrediction(item_id, "production", adapter, p, threshold, int(p >= threshold), False)
        for item_id, p in zip(ids, probabilities)])
    return ids


def _quality(url: str) -> dict:
    (stats,) = httpx.get(f"{url}/v1/quality", params={"window_days": 7}, timeout=30
                         ).json()["adapters"]
    return stats


def test_expected_confusion_of_known_probabilities(db_url):
    store = Store(db_url)
    ids = _predicted(store, [0.9, 0.6, 0.3, 0.1])
    config = IngestConfig(database_url=db_url, metrics_cache_s=0)
    with serve_app(create_ingest_app(config)) as url:
        stats = _quality(url)
        # no label yet: TP .9+.6, FP .1+.4, FN .3+.1, TN .7+.9
        assert stats["expected_unlabelled"] == pytest.approx(
            {"predictions": 4, "tp": 1.5, "fp": 0.5, "fn": 0.4, "tn": 1.6,
             "precision": 0.75, "recall": 1.5 / 1.9, "f1": 3.0 / 3.9})
        assert stats["precision"] is None and stats["estimation_error"]["precision"] is None
        metrics = scrape(url)
        assert sample(metrics, "signals_ingest_estimated_precision", adapter="v1",
                      role="primary", window="7d", items="unlabelled") == pytest.approx(0.75)
        assert sample(metrics, "signals_ingest_estimated_precision", adapter="v1",
                      role="primary", window="7d", items="labelled") is None

        store.add_feedback(ids[0], 1, "analyst")  # predicted 1 at p=.9: a true positive
        store.add_feedback(ids[2], 0, "analyst")  # predicted 0 at p=.3: a true negative
        stats = _quality(url)
        assert (stats["precision"], stats["recall"]) == (1.0, 1.0)
        # unlabelled: .6 (predicted 1) and .1 (predicted 0)
        assert stats["estimated"]["unlabelled"] == pytest.approx(
            {"precision": 0.6, "recall": 0.6 / 0.7, "f1": 1.2 / 1.7})
        # all: measured TP 1 plus expected .6; FP 0 + .4; FN 0 + .1
        assert stats["estimated"]["all"] == pytest.approx(
            {"precision": 0.8, "recall": 1.6 / 1.7, "f1": 3.2 / 3.7})
        # labelled, estimated: TP .9, FP .1, FN .3 against the measured 1, 1
        assert stats["estimation_error"] == pytest.approx(
            {"precision": 0.9 - 1.0, "recall": 0.9 / 1.2 - 1.0, "f1": 1.8 / 2.2 - 1.0})
        metrics = scrape(url)
        for items, value in (("unlabelled", 0.6), ("all", 0.8), ("labelled", 0.9)):
            assert sample(metrics, "signals_ingest_estimated_precision", adapter="v1",
                          role="primary", window="7d", items=items) == pytest.approx(value)
        assert sample(metrics, "signals_ingest_estimation_error_recall", adapter="v1",
                      role="primary", window="7d") == pytest.approx(0.75 - 1.0)


@pytest.mark.parametrize("calibrated", [True, False], ids=["calibrated", "overconfident"])
def test_estimate_before_labels_against_the_measurement_after(tmp_path, calibrated):
    """2,000 predictions whose labels are drawn from P(signal) itself (calibrated) or
    from half of it (P overstates the signal rate 2x): the estimate made before any label
    is within 0.03 of the precision and recall measured once every label came, and the
    error gauge says so; overconfident, it is off by more than 0.2 and the gauge shows it."""
    rng = random.Random(7)
    probabilities = [rng.random() for _ in range(2000)]
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    ids = _predicted(store, probabilities)
    config = IngestConfig(database_url=str(store.url), metrics_cache_s=0)
    with serve_app(create_ingest_app(config)) as url:
        before = _quality(url)["estimated"]["unlabelled"]
        for item_id, p in zip(ids, probabilities):
            store.add_feedback(item_id, int(rng.random() < (p if calibrated else p / 2)),
                               "analyst")
        after = _quality(url)
        error = scrape(url)
    for metric in ("precision", "recall"):
        gap = before[metric] - after[metric]
        gauge = sample(error, f"signals_ingest_estimation_error_{metric}", adapter="v1",
                       role="primary", window="7d")
        assert gauge == pytest.approx(gap)  # every item labelled: same items either way
        if calibrated:
            assert abs(gap) < 0.03, (metric, before, after)
        elif metric == "precision":
            assert gap > 0.2, (before, after)
