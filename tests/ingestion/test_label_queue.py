"""The label queue: the budget per day, the random share and the uncertainty picks, on
the real ingestion service and the real classification API (base model, in-process
backend) over real HTTP, on a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from ingestion.api import create_ingest_app
from ingestion.config import IngestConfig
from ingestion.label_queue import LabelQueue, day_start, sampled_quality
from ingestion.store import Store
from tests.conftest import serve_app
from tests.ingestion.test_ingest_support import classification_api, make_classifier, wait_for

pytestmark = pytest.mark.slow

ITEMS = 12


@pytest.fixture(scope="module")
def api_url(base_model_dir, tokenizer, tmp_path_factory):
    classifier = make_classifier(base_model_dir, tmp_path_factory.mktemp("empty-registry"),
                                 tokenizer, max_prompt_tokens=160)
    with classification_api(classifier) as (url, _):
        yield url


def article(i: int) -> dict:
    verbs = ["buys", "reports", "sells", "merges with", "cuts", "raises"]
    return {"id": f"lq-{i}", "title": f"Firm {i} {verbs[i % 6]} unit {i * 7919 % 10007}",
            "text": f"Firm {i} said on day {i % 28 + 1} it had {verbs[(i + 1) % 6]} "
                    f"{i * 13 % 97 + 1} mln dlrs of stock in lot {i * 104729 % 100003}.",
            "date_published": "1987-04-02T10:00:00Z"}


def test_the_queue_honours_the_budget_the_random_share_and_the_uncertainty(api_url, db_url):
    config = IngestConfig(database_url=db_url, classifier_url=api_url, adapter="base",
                          idle_poll_s=0.1, label_budget_per_day=5, label_random_share=0.4)
    with serve_app(create_ingest_app(config)) as url:
        pushed = httpx.post(f"{url}/v1/items", timeout=30,
                            json={"articles": [article(i) for i in range(ITEMS)]}).json()
        ids = [r["item_id"] for r in pushed["results"]]
        assert len(set(ids)) == ITEMS
        stored = wait_for(lambda: (lambda got: got if all(i["predictions"] for i in got)
                                   else None)([httpx.get(f"{url}/v1/items/{i}", timeout=30)
                                               .json() for i in ids]), 120, "all classified")
        margin = {i["id"]: abs(i["predictions"][0]["p_signal"] - i["predictions"][0]["threshold"])
                  for i in stored}

        first = httpx.get(f"{url}/v1/label-queue", timeout=30).json()
        picks = first["items"]
        assert len(picks) == 5 and first["budget"] == {"per_day": 5, "used_today": 5,
                                                       "remaining_today": 0}
        random_picks = [p for p in picks if p["reason"] == "random"]
        uncertain = [p["item_id"] for p in picks if p["reason"] == "uncertain"]
        assert len(random_picks) == 2 and len(uncertain) == 3  # 5 x 0.4 exactly
        assert all(p["p_inclusion"] == pytest.approx(2 / ITEMS) for p in random_picks)
        rest = sorted((i for i in ids if i not in {p["item_id"] for p in random_picks}),
                      key=lambda i: (margin[i], i))
        assert sorted(uncertain) == sorted(rest[:3])  # the closest to the threshold

        # Asked again the same day: the same open items, nothing new.
        again = httpx.get(f"{url}/v1/label-queue", timeout=30).json()
        assert [p["item_id"] for p in again["items"]] == [p["item_id"] for p in picks]

        labels = {p["item_id"]: 1 - p["predicted"] if n == 0 else p["predicted"]
                  for n, p in enumerate(picks)}
        answer = httpx.post(f"{url}/v1/feedback", timeout=30, json={"feedback": [
            {"item_id": i, "label": label} for i, label in labels.items()]})
        assert answer.status_code == 200, answer.text
        done = httpx.get(f"{url}/v1/label-queue", timeout=30).json()
        assert done["items"] == []  # all labelled, budget spent: nothing until tomorrow
        assert done["sampled_quality"]["labelled_random_picks"] == 2
        expected = sampled_quality([p | {"label": labels[p["item_id"]]} for p in picks])
        assert done["sampled_quality"] == expected

    # The next UTC day the budget is back: new items, none handed out before.
    store = Store(db_url)
    tomorrow = day_start(datetime.now(timezone.utc)) + timedelta(days=1, hours=1)
    later = LabelQueue(store, 5, 0.4, random.Random(3)).hand_out(50, now=tomorrow)
    assert len(later["items"]) == 5
    assert not {p["item_id"] for p in later["items"]} & set(labels)
    assert later["budget"]["used_today"] == 5


def test_sampled_quality_weights_each_random_pick_by_its_inclusion_chance():
    picks = [  # reason, p_inclusion, predicted, label
        ("random", 0.5, 1, 1), ("random", 0.25, 1, 0), ("random", 0.5, 0, 1),
        ("random", 0.5, 0, 0), ("uncertain", None, 1, 0), ("random", 0.5, 1, None)]
    quality = sampled_quality([{"reason": r, "p_inclusion": p, "predicted": y, "label": t}
                               for r, p, y, t in picks])
    # TP weight 2, FP weight 4 (1 / 0.25), FN weight 2; the uncertain and unlabelled
    # picks do not count.
    assert quality["labelled_random_picks"] == 4
    assert quality["precision"] == pytest.approx(2 / 6)
    assert quality["recall"] == pytest.approx(2 / 4)
    assert quality["f1"] == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))


def test_where_the_candidate_disagrees_with_production_is_labelled_first(db_url):
    """Beyond the random share, the queue hands out the items on which the candidate in
    shadow decided otherwise than production (newest first): the labels the promotion
    gate needs; then the uncertain ones. A shadow of the same version never disagrees."""
    from ingestion.store import NewPrediction
    from pipeline.article import Article
    from pipeline.dedupe import content_hash

    store = Store(db_url)
    ids = []
    for i in range(10):
        a = Article(id=f"dq{i}", title=f"Item {i}", text=f"Story {i} of the day.")
        ids.append(store.insert_item(a, "test", content_hash(a), None, shadow=True)[0])
    # production: P 0.9 (signal) on all but item 9, which sits on the threshold
    store.record_predictions("primary", [
        NewPrediction(i, "production", "v1", 0.5 if n == 9 else 0.9, 0.5, 1, False)
        for n, i in enumerate(ids)])
    # the candidate v2 says "not a signal" on items 2, 5 and 7; item 8's shadow is v1 itself
    store.record_predictions("shadow", [
        NewPrediction(i, "candidate", "v1" if n == 8 else "v2", 0.1 if n in (2, 5, 7) else 0.8,
                      0.5, 0 if n in (2, 5, 7) else 1, False) for n, i in enumerate(ids)])
    queue = LabelQueue(store, budget_per_day=2, random_share=0.0)
    today = datetime.now(timezone.utc)
    first = {p["item_id"]: p["reason"] for p in queue.hand_out(10, now=today)["items"]}
    assert first == {ids[7]: "disagreement", ids[5]: "disagreement"}  # the newest two
    tomorrow = {p["item_id"]: p["reason"] for p in queue.hand_out(
        10, now=today + timedelta(days=1))["items"] if p["item_id"] not in first}
    assert tomorrow == {ids[2]: "disagreement", ids[9]: "uncertain"}
    store.close()
