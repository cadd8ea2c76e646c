"""The promotion gate on real parts: the real classification API (in-process backend,
two real LoRA versions of the trained adapter, admin token) on real HTTP, the real
ingestion service classifying real Reuters articles with production and a shadow
candidate, a real store (SQLite and PostgreSQL). The labels are the test's: they make
one version right where the two disagree, so the evidence the gate sees is known."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from ingestion.api import create_ingest_app
from ingestion.config import IngestConfig, PromotionConfig
from ingestion.promotion import judge
from ingestion.service import IngestionService
from serve.app import create_app
from serve.vllm_server import wait_until_ok
from tests.conftest import free_port, publish_variant, serve_app
from tests.ingestion.test_ingest import short_articles
from tests.ingestion.test_ingest_support import make_classifier, sample, scrape, wait_for
from classify.registry import AdapterRegistry

pytestmark = pytest.mark.slow

ADMIN = "serve-admin-token-for-the-test"


@pytest.fixture(scope="module")
def served(tmp_path_factory, trained_adapter, base_model_dir, tokenizer):
    root = tmp_path_factory.mktemp("promotion-registry")
    first = publish_variant(root, trained_adapter, "first", 1.0)
    second = publish_variant(root, trained_adapter, "second", -1.0)  # disagrees often
    registry = AdapterRegistry(root)
    classifier = make_classifier(base_model_dir, root, tokenizer, max_prompt_tokens=128)
    app = create_app(classifier, max_batch=64, watch_interval_s=None, admin_token=ADMIN)
    with serve_app(app, free_port()) as url:
        wait_until_ok(f"{url}/ready", 120, what="classification API")
        yield url, registry, first, second


def aliases(url: str) -> dict[str, str]:
    return httpx.get(f"{url}/v1/adapters", timeout=30).json()["aliases"]


def classified(url: str, ids: list[int]) -> list[dict]:
    def both_roles():
        got = [httpx.get(f"{url}/v1/items/{i}", timeout=30).json() for i in ids]
        return got if all(len(i["predictions"]) == 2 for i in got) else None
    return wait_for(both_roles, 180, "both roles classified")


def label_of(item: dict, role: str) -> int:
    (prediction,) = [p for p in item["predictions"] if p["role"] == role]
    return prediction["label"]


def post_labels(url: str, labels: dict[int, int]) -> None:
    answer = httpx.post(f"{url}/v1/feedback", timeout=30, json={"feedback": [
        {"item_id": i, "label": label} for i, label in labels.items()]})
    assert answer.status_code == 200 and answer.json()["counts"] == {"recorded": len(labels)}


def push(url: str, articles) -> list[int]:
    answer = httpx.post(f"{url}/v1/items", timeout=30,
                        json={"articles": [a.to_record() for a in articles]}).json()
    assert answer["accepted"] == len(articles), answer
    return [r["item_id"] for r in answer["results"]]


def test_a_better_candidate_is_promoted_and_a_promotion_that_then_loses_is_rolled_back(
        served, reuters_dataset, db_url):
    api_url, registry, first, second = served
    registry.set_alias("production", first.name)
    registry.set_alias("candidate", second.name)
    articles = short_articles(reuters_dataset, "1987-04", signals=16, others=32)
    config = IngestConfig(
        database_url=db_url, classifier_url=api_url, adapter="production",
        shadow_adapter="candidate", classifier_admin_token=ADMIN, batch_size=8,
        # The suite's adapter is a few training steps old: its P(signal) sit around 0.15
        # and the inverted variant's above 0.5. A threshold of 0.15 gives the first a mix
        # of answers and the second all 1s, so each can be the one that is right.
        threshold=0.15,
        idle_poll_s=0.1, metrics_cache_s=0,
        # interval_s: the test runs each evaluation itself
        promotion=PromotionConfig(enabled=True, min_labels=12, confidence=0.9,
                                  bootstrap_samples=500, interval_s=3600))
    service = IngestionService(config)
    with serve_app(create_ingest_app(config, service)) as url:
        items = classified(url, push(url, articles[0::2]))
        disagree = [i for i in items if label_of(i, "primary") != label_of(i, "shadow")]
        assert len(disagree) >= 4, "the two versions must disagree on some items"
        # The candidate is right on every item: on a few, that is not enough labels.
        truth = {i["id"]: label_of(i, "shadow") for i in items}
        few = dict(list(truth.items())[:6])
        post_labels(url, few)
        decision = asyncio.run(service.promotion.evaluate())
        assert decision["decision"] == "not_enough_labels"
        assert aliases(api_url) == {"production": first.name, "candidate": second.name}

        post_labels(url, {i: label for i, label in truth.items() if i not in few})
        decision = asyncio.run(service.promotion.evaluate())
        assert decision["decision"] == "promote", decision
        figures = decision["figures"]
        assert figures["labelled"] == 24 and figures["f1_candidate"] == 1.0
        assert figures["f1_difference_interval"][0] > 0
        # production serves the candidate's version now; the replaced one stays in shadow
        assert aliases(api_url) == {"production": second.name, "candidate": first.name}
        later = classified(url, push(url, articles[1::2]))
        assert {p["adapter"] for i in later for p in i["predictions"]
                if p["role"] == "primary"} == {second.name}

        # On the newer items the replaced version is right: the promotion is undone.
        disagree = [i for i in later if label_of(i, "primary") != label_of(i, "shadow")]
        assert len(disagree) >= 4, "the two versions must disagree on some newer items"
        post_labels(url, {i["id"]: label_of(i, "shadow") for i in later})
        decision = asyncio.run(service.promotion.evaluate())
        assert decision["decision"] == "rollback", decision["figures"]
        assert decision["figures"]["labelled"] == 24  # judged on the items since promotion
        assert aliases(api_url) == {"production": first.name, "candidate": first.name}
        assert asyncio.run(service.promotion.evaluate()) is None  # nothing to compare

        stored = httpx.get(f"{url}/v1/promotions", timeout=30).json()
        assert [d["decision"] for d in stored["decisions"]] == [
            "rollback", "promote", "not_enough_labels"]
        samples = scrape(url)
        for name in ("rollback", "promote", "not_enough_labels"):
            assert sample(samples, "signals_ingest_promotions_total", decision=name) == 1


def pairs(production: list[int], candidate: list[int], actual: list[int | None]):
    return [(p, 0.9 if p else 0.1, c, 0.9 if c else 0.1, a)
            for p, c, a in zip(production, candidate, actual)]


def test_a_worse_or_equal_candidate_is_kept_and_an_estimate_that_drops_vetoes_a_win():
    policy = PromotionConfig(min_labels=20, bootstrap_samples=500)
    actual = [1, 0] * 20
    worse = judge(pairs(actual, [0] * 40, actual), policy)  # production right everywhere
    assert worse.wins is False and worse.figures["f1_production"] == 1.0
    assert judge(pairs(actual, actual, actual), policy).wins is False  # a tie is no win
    better = judge(pairs([0] * 40, actual, actual), policy)
    assert better.wins is True and better.figures["f1_difference_interval"][0] > 0
    # Unlabelled items where the candidate's own P(signal) says it does much worse.
    unlabelled = [(1, 0.95, 1, 0.3, None)] * 20
    vetoed = judge(pairs([0] * 40, actual, actual) + unlabelled, policy)
    assert vetoed.figures["estimate_ok"] is False and vetoed.wins is False
    assert judge(pairs([0] * 10, actual[:10], actual[:10]), policy).wins is None
