"""Label shift in the ingestion service, with the real classification API: the stream's
signal rate is estimated per version from the answers, exported, and sent with the
next requests when ``label_shift`` is on."""

from __future__ import annotations

import httpx
import pytest

from ingestion.api import create_ingest_app
from ingestion.config import IngestConfig
from ingestion.store import Store
from pipeline.dataset import load_split
from pipeline.dedupe import deduplicate
from tests.conftest import publish_variant, serve_app
from tests.ingestion.test_ingest_support import (classification_api, make_classifier,
                                                 sample, scrape, wait_for)
from classify.calibration import estimate_prior, prior_shift
from classify.registry import AdapterRegistry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def production(tmp_path_factory, trained_adapter, base_model_dir, tokenizer):
    root = tmp_path_factory.mktemp("label-shift-registry")
    version = publish_variant(root, trained_adapter, "prod", 1.0)
    AdapterRegistry(root).set_alias("production", version.name)
    classifier = make_classifier(base_model_dir, root, tokenizer)
    with classification_api(classifier) as (url, _):
        yield url, version


def test_the_stream_rate_is_estimated_exported_and_sent(production, reuters_dataset, tmp_path):
    api_url, version = production
    june = sorted([a for a in deduplicate(load_split(reuters_dataset, "1987-06")).kept
                   if len(a.text) > 80], key=lambda a: len(a.text))[:24]
    config = IngestConfig(database_url=f"sqlite:///{tmp_path / 'ingest.db'}",
                          classifier_url=api_url, batch_size=4, idle_poll_s=0.2,
                          metrics_cache_s=0, label_shift=True, label_shift_window=16,
                          label_shift_min_items=10)
    store = Store(config.database_url)
    with serve_app(create_ingest_app(config)) as ingest_url:
        for start in range(0, len(june), 4):  # in order: the estimate starts mid-stream
            batch = [a.to_record() for a in june[start:start + 4]]
            answer = httpx.post(f"{ingest_url}/v1/items", json={"articles": batch}, timeout=30)
            assert answer.status_code == 200 and answer.json()["accepted"] == 4, answer.text
            wait_for(lambda: store.pending_count("primary") == 0, 300, "classification")
        samples = scrape(ingest_url)
        stored = {}
        for item_id in range(1, len(june) + 1):
            item = httpx.get(f"{ingest_url}/v1/items/{item_id}", timeout=30).json()
            (prediction,) = item["predictions"]
            stored[item["external_id"]] = prediction["p_signal"]
    direct = httpx.post(f"{api_url}/v1/classify", timeout=300, json={
        "articles": [a.to_record() for a in june], "adapter": "production"}).json()["results"]
    unshifted = [r["p_signal"] for r in direct]
    fitted = version.calibration.fitted_on.base_rate
    assert all(r["fitted_rate"] == pytest.approx(fitted) for r in direct)
    expected = estimate_prior(unshifted[-16:], fitted)  # the last 16 (the window)
    exported = sample(samples, "signals_ingest_estimated_signal_rate", adapter=version.name,
                      role="primary")
    assert exported == pytest.approx(expected, abs=1e-6)
    assert sample(samples, "signals_ingest_estimated_signal_rate_items",
                  adapter=version.name, role="primary") == 16
    # the first 10 answers went unshifted; once 10 were in, each request carried a rate
    first = [stored[str(a.id)] for a in june[:8]]
    assert first == pytest.approx(unshifted[:8], abs=1e-6)
    later = [(stored[str(a.id)], p) for a, p in zip(june[12:], unshifted[12:])]
    assert all(abs(s - p) > 1e-6 for s, p in later)
    rate_of_last = estimate_prior(unshifted[4:20], fitted)  # what the last batch was sent
    for (s, p) in later[-4:]:
        assert s == pytest.approx(prior_shift(p, fitted, rate_of_last), abs=1e-4)
