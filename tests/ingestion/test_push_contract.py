"""The ingestion push and feedback routes answer per item and publish the rules they
enforce: an empty article in a batch is rejected in its place while the others are
stored, and the OpenAPI document states the exactly-one-of forms (so a client built
from the schema sends nothing the server refuses)."""

from __future__ import annotations

import httpx

from ingestion.api import create_ingest_app
from ingestion.config import IngestConfig
from tests.conftest import free_port, serve_app


def test_empty_article_is_rejected_in_its_place_and_the_rest_stored(tmp_path):
    config = IngestConfig(database_url=f"sqlite:///{tmp_path / 'ingest.db'}",
                          classifier_url=f"http://127.0.0.1:{free_port()}",
                          idle_poll_s=5, retry_initial_s=5)
    with serve_app(create_ingest_app(config)) as url:
        articles = [{"id": "a", "title": "Acme to buy Beta", "text": "Acme agreed to buy Beta."},
                    {"id": "empty", "title": " ", "text": ""},
                    {"id": "b", "title": "Gamma shares fall", "text": "Gamma fell 3 pct."}]
        answer = httpx.post(f"{url}/v1/items", json={"articles": articles}, timeout=30)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["accepted"], body["rejected"]) == (2, 1)
        assert [r["status"] for r in body["results"]] == ["accepted", "rejected", "accepted"]
        assert body["results"][1]["error"]["type"] == "empty_article"
        stored = [httpx.get(f"{url}/v1/items/{r['item_id']}", timeout=30).json()
                  for r in body["results"] if r["item_id"] is not None]
        assert sorted(item["external_id"] for item in stored) == ["a", "b"]

        schemas = httpx.get(f"{url}/openapi.json", timeout=30).json()["components"]["schemas"]
        def forms(name):
            return [form["required"] for form in schemas[name]["oneOf"]]

        assert forms("PushRequest") == [["article"], ["articles"]]
        assert schemas["PushRequest"]["properties"]["articles"]["anyOf"][0]["minItems"] == 1
        assert forms("FeedbackRequest") == [["feedback"], ["item_id", "label"],
                                            ["external_id", "label"]]
        assert forms("FeedbackEntry") == [["item_id"], ["external_id"]]
        # {"article": null} names no article: the forms demand a value, not just the key.
        assert schemas["PushRequest"]["oneOf"][0]["properties"]["article"]["type"] == "object"
