"""The dead letter: an item the classification API fails on by itself leaves the queue
after ``classify_max_failures`` failures instead of holding back every item behind it;
an outage (the API fails on everything) counts nothing against the items.

The real classification API (base model, in-process backend) on real HTTP, behind a
fault injector: an ASGI layer that answers 500 to a /v1/classify request carrying the
poison marker (what a backend crash on one article looks like to the ingestion
service), or to every request while ``outage`` is set. The ingestion service runs on
a real store (SQLite and PostgreSQL).
"""

from __future__ import annotations

import json

import httpx
import pytest

from ingestion.api import create_ingest_app
from ingestion.config import IngestConfig
from tests.ingestion.test_ingest_support import (
    classification_api,
    make_classifier,
    sample,
    scrape,
    wait_for,
)
from tests.conftest import serve_app

pytestmark = pytest.mark.slow

POISON = "POISON-7f3a"
ADMIN = "admin-token-for-the-test"


class FaultInjector:
    """ASGI layer over the real API: 500 for classify requests naming the poison, or all
    of them during an ``outage``; everything else reaches the API untouched."""

    def __init__(self, app):
        self.app, self.outage, self.poison_on = app, False, True
        self.faults = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/v1/classify":
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if self.outage or (self.poison_on and POISON.encode() in body):
            self.faults += 1
            answer = json.dumps({"error": {"type": "backend_crashed",
                                           "message": "injected fault"}}).encode()
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": answer})
            return

        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


@pytest.fixture(scope="module")
def faulty_api(base_model_dir, tokenizer, tmp_path_factory):
    classifier = make_classifier(base_model_dir, tmp_path_factory.mktemp("empty-registry"),
                                 tokenizer, max_prompt_tokens=160)
    with classification_api(classifier) as (url, counter):
        injector = FaultInjector(counter.app)
        counter.app = injector  # the counter stays outermost, the fault sits under it
        yield url, injector


def article(i: int, poison: bool = False) -> dict:
    return {"id": f"dl-{i}", "title": f"{POISON if poison else 'Lot'} {i}: Acme buys unit {i}",
            "text": f"Acme said it paid {i * 13 + 1} mln dlrs for unit {i * 7919}.",
            "date_published": "1987-04-02T10:00:00Z"}


def config_for(db_url: str, api_url: str) -> IngestConfig:
    return IngestConfig(database_url=db_url, classifier_url=api_url, adapter="base",
                        batch_size=8, classify_max_failures=2, retry_initial_s=0.1,
                        retry_max_s=0.5, idle_poll_s=0.1, admin_token=ADMIN,
                        metrics_cache_s=0)


def items_of(url: str, ids: list[int]) -> list[dict]:
    return [httpx.get(f"{url}/v1/items/{i}", timeout=30).json() for i in ids]


def test_one_item_that_breaks_the_backend_is_dead_lettered_and_the_rest_go_on(
        faulty_api, db_url):
    api_url, injector = faulty_api
    injector.outage, injector.poison_on = False, True
    with serve_app(create_ingest_app(config_for(db_url, api_url))) as url:
        # The poison is the oldest item: without isolation every batch would hold it.
        pushed = httpx.post(f"{url}/v1/items", timeout=30, json={
            "articles": [article(0, poison=True)] + [article(i) for i in range(1, 6)]}).json()
        ids = [r["item_id"] for r in pushed["results"]]
        assert pushed["accepted"] == 6
        stored = wait_for(lambda: (lambda got: got if all(
            i["state"] in ("classified", "dead_letter") for i in got) else None)(
                items_of(url, ids)), 120, "every item classified or dead-lettered")
        assert [i["state"] for i in stored] == ["dead_letter"] + ["classified"] * 5
        assert [len(i["predictions"]) for i in stored] == [0] + [1] * 5  # exactly once
        letters = httpx.get(f"{url}/v1/dead-letters", timeout=30).json()["dead_letters"]
        assert [(d["item_id"], d["role"], d["failures"]) for d in letters] == [
            (ids[0], "primary", 2)]
        assert "500" in letters[0]["last_error"]
        assert sample(scrape(url), "signals_ingest_dead_lettered_items_total",
                      role="primary") == 1

        # The backend is fixed; an admin (only an admin) puts the item back.
        injector.poison_on = False
        assert httpx.post(f"{url}/v1/dead-letters/requeue", json={}, timeout=30
                          ).status_code in (401, 403)
        answer = httpx.post(f"{url}/v1/dead-letters/requeue", json={"item_ids": [ids[0]]},
                            headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
        assert answer.status_code == 200 and answer.json() == {"requeued": 1}
        again = wait_for(lambda: (lambda i: i if i["state"] == "classified" else None)(
            items_of(url, ids[:1])[0]), 60, "the requeued item classified")
        assert len(again["predictions"]) == 1
        assert httpx.get(f"{url}/v1/dead-letters", timeout=30).json() == {"dead_letters": []}


def test_an_outage_counts_nothing_against_the_items(faulty_api, db_url):
    api_url, injector = faulty_api
    injector.outage, injector.poison_on = True, False
    with serve_app(create_ingest_app(config_for(db_url, api_url))) as url:
        try:
            faults = injector.faults
            pushed = httpx.post(f"{url}/v1/items", timeout=30, json={
                "articles": [article(i) for i in range(10, 14)]}).json()
            ids = [r["item_id"] for r in pushed["results"]]
            # Several failed rounds (batch, then one by one), far past classify_max_failures.
            wait_for(lambda: injector.faults >= faults + 5 * 4, 60, "failed rounds")
            assert {i["state"] for i in items_of(url, ids)} == {"pending"}
            assert httpx.get(f"{url}/v1/dead-letters", timeout=30).json() == {
                "dead_letters": []}
        finally:
            injector.outage = False
        stored = wait_for(lambda: (lambda got: got if all(
            i["state"] == "classified" for i in got) else None)(items_of(url, ids)), 120,
            "every item classified after the outage")
        assert [len(i["predictions"]) for i in stored] == [1] * 4
