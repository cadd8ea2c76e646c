"""The link stage inside the ingestion service: newsletters as they really arrive.

A newsletter e-mail with ten linked stories is dropped into the service's drop
directory; the stories' pages are served by the local test site
(``tests/pipeline/link_site.py``). The service follows each link, stores the extracted
article with its provenance, counts the fetches on /metrics, recognises the same
article reached through another link, and stores an item whose site is too slow with
its own text once the deadline passes. The slow test runs the same through the real
classification API and checks the text the API received for every story.
"""

from __future__ import annotations

import json
import time
from datetime import date

import httpx
import pytest
from sqlalchemy import select

from ingestion.api import create_ingest_app
from ingestion.config import IngestConfig
from ingestion.schema import item_links, items
from ingestion.store import Store
from pipeline.article import Article
from pipeline.dedupe import content_hash
from pipeline.link_settings import LinkSettings
from pipeline.links import LinkProvenance
from tests.conftest import free_port, serve_app
from tests.ingestion.test_ingest_support import (
    classification_api,
    make_classifier,
    sample,
    scrape,
    wait_for,
)
from tests.pipeline.link_site import BODY, LinkSite, serve_link_site, story_lead, story_title
from tests.pipeline.test_link_sources import newsletter

STORIES = range(1, 11)


def test_store_keeps_provenance_and_finds_an_article_by_canonical_url(db_url):
    """``item_links`` on SQLite and PostgreSQL: written with the item in one
    transaction, read back by ``get_item``, searched by canonical URL."""
    store = Store(db_url)
    try:
        article = Article(id="n1", title="Acme buys Widget", text="The article's text.",
                          link="https://news.example/acme?utm_source=x")
        provenance = LinkProvenance(
            text_origin="page", fetch_status="ok", requested_url=article.link,
            final_url="https://news.example/acme", canonical_url="https://news.example/acme",
            http_status=200, extractor="trafilatura 2.0", page_date=date(2024, 3, 5),
            page_chars=1234)
        item_id, inserted = store.insert_item(article, "letters", content_hash(article), None,
                                              shadow=False, provenance=provenance)
        plain = Article(id="n2", title="No link", text="Stored without the stage.")
        plain_id, _ = store.insert_item(plain, "letters", content_hash(plain), None,
                                        shadow=False)
        assert inserted
        assert store.find_by_canonical_url("https://news.example/acme") == item_id
        assert store.find_by_canonical_url("https://news.example/other") is None
        # typed in, JSON out (the item view): the same provenance, read back whole
        stored = store.get_item(item_id)["link_provenance"]
        assert LinkProvenance.model_validate(stored) == provenance
        assert stored["page_date"] == "2024-03-05"
        assert store.get_item(plain_id)["link_provenance"] is None
    finally:
        store.close()


def link_config(tmp_path, classifier_url: str, **overrides) -> IngestConfig:
    settings = LinkSettings(cache_path=tmp_path / "http-cache.sqlite", per_host_interval_s=0,
                            per_host_concurrency=4, backoff_initial_s=0.1,
                            page_timeout_s=10, allow_networks=["127.0.0.0/8"])
    return IngestConfig(**{
        "database_url": f"sqlite:///{tmp_path / 'ingest.db'}", "classifier_url": classifier_url,
        "drop_dir": tmp_path / "drop", "drop_interval_s": 0.2, "links": settings,
        "link_deadline_s": 20, "metrics_cache_s": 0, **overrides})


def stored_stories(config: IngestConfig) -> dict[int, tuple[dict, dict]]:
    """story number -> (item row, stored provenance), from the store itself."""
    store = Store(config.database_url)
    try:
        with store.transaction() as conn:
            rows = conn.execute(select(items, item_links.c.provenance)
                                .join(item_links, item_links.c.item_id == items.c.id)).all()
    finally:
        store.close()
    return {int(row.external_id.rsplit("#", 1)[1]): (row._asdict(), row.provenance)
            for row in rows if "#" in row.external_id}


def drop_newsletter(config: IngestConfig, site: LinkSite) -> None:
    config.drop_dir.mkdir(parents=True, exist_ok=True)
    partial = config.drop_dir / "markets-morning.eml.part"
    partial.write_bytes(newsletter(site.base))
    partial.rename(config.drop_dir / "markets-morning.eml")  # appears whole


def assert_story_is_the_article(number: int, row: dict, provenance: dict, site: LinkSite):
    assert row["title"] == story_title(number)
    # the page's article, not the newsletter's two-line teaser, and none of its chrome
    assert story_lead(number) in row["text"] and BODY[2] in row["text"], row["text"]
    assert "Reader comment" not in row["text"] and "Cookie settings" not in row["text"]
    assert provenance["fetch_status"] == "ok", provenance
    assert provenance["text_origin"] in ("page", "both")
    assert provenance["requested_url"] == site.url(f"/story/{number}?utm_source=newsletter"
                                                   "&utm_medium=email")
    assert provenance["final_url"] == site.url(f"/story/{number}")  # tracking removed
    assert provenance["canonical_url"] == site.url(f"/story/{number}")
    assert provenance["extractor"].startswith("trafilatura")


def test_newsletter_links_are_followed_stored_with_provenance_deduped_and_counted(tmp_path):
    unreachable_api = f"http://127.0.0.1:{free_port()}"  # items stay pending: no model here
    with serve_link_site(LinkSite(slow_s=3.0)) as site:
        config = link_config(tmp_path, unreachable_api, retry_initial_s=5)
        with serve_app(create_ingest_app(config)) as url:
            drop_newsletter(config, site)
            wait_for(lambda: (config.drop_dir / "processed" / "markets-morning.eml").exists(),
                     60, "the newsletter to be ingested")
            stories = stored_stories(config)
            assert sorted(stories) == list(STORIES)
            for number, (row, provenance) in stories.items():
                assert_story_is_the_article(number, row, provenance, site)
            detail = httpx.get(f"{url}/v1/items/{stories[3][0]['id']}").json()
            assert detail["link_provenance"]["fetch_status"] == "ok"
            assert detail["text"] == stories[3][0]["text"]

            # The same article through another newsletter (other tracking parameters,
            # another id) is the stored item, not a new one; its page is not fetched again.
            requests_before = site.requests["/story/3"]
            again = httpx.post(f"{url}/v1/items", json={"source": "other-letter", "article": {
                "id": "other-7", "title": "Contract win for Company 3",
                "text": "Company 3 wins. Read more",
                "link": site.url("/story/3?utm_campaign=weekly#top")}}).json()
            assert again["results"][0] == {**again["results"][0], "status": "duplicate",
                                           "duplicate_kind": "link",
                                           "item_id": stories[3][0]["id"]}
            assert site.requests["/story/3"] == requests_before

            samples = scrape(url)
            host = site.base.removeprefix("http://")
            assert sample(samples, "signals_ingest_link_fetches_total", host=host,
                          status="ok") == 10  # one per distinct article: "other-7" shares one
            assert sample(samples, "signals_ingest_link_requests_total", host=host,
                          kind="network") >= 10
            assert sample(samples, "signals_ingest_duplicates_total", source="other-letter",
                          kind="link") == 1

        # A site slower than the deadline: the item is stored on its own text, says so,
        # and the push is answered soon after the deadline, not when the site answers.
        config = config.model_copy(update={"link_deadline_s": 1.0})
        with serve_app(create_ingest_app(config)) as url:
            started = time.monotonic()
            slow = httpx.post(f"{url}/v1/items", timeout=30, json={"article": {
                "id": "slow-1", "title": "Too late to read",
                "text": "Markets opened higher on Tuesday. Continue reading...",
                "link": site.url("/slow")}}).json()
            assert time.monotonic() - started < site.slow_s
            assert slow["accepted"] == 1
            item = httpx.get(f"{url}/v1/items/{slow['results'][0]['item_id']}").json()
            assert item["text"] == "Markets opened higher on Tuesday. Continue reading..."
            assert item["link_provenance"]["fetch_status"] == "deadline"
            assert item["link_provenance"]["text_origin"] == "teaser"
            assert sample(scrape(url), "signals_ingest_link_fetches_total",
                          host=site.base.removeprefix("http://"), status="deadline") == 1


@pytest.mark.slow
def test_newsletter_stories_are_classified_on_their_article_text(
        tmp_path, base_model_dir, tokenizer):
    """End to end: newsletter e-mail -> drop directory -> link stage -> store -> real
    classification API (in-process backend on the real base model; what is checked is
    the text it is given, so no adapter needs training) -> stored predictions."""
    registry_root = tmp_path / "registry"
    registry_root.mkdir()
    classifier = make_classifier(base_model_dir, registry_root, tokenizer,
                                 max_prompt_tokens=256)
    received: dict[str, str] = {}

    with classification_api(classifier) as (api_url, _counter), serve_link_site() as site:
        # A spy on the classify loop's request: records the text each item is sent
        # with, then makes the real request unchanged.
        config = link_config(tmp_path, api_url, adapter="base", batch_size=4,
                             idle_poll_s=0.2, retry_initial_s=0.2)
        app = create_ingest_app(config)
        service = app.state.service
        original_request = service.classify._request

        async def recording_request(role, batch):
            for item in batch:
                received[item.article.title] = item.article.text
            return await original_request(role, batch)

        service.classify._request = recording_request
        with serve_app(app) as url:
            drop_newsletter(config, site)
            wait_for(lambda: len([s for s in stored_stories(config).values()
                                  if s[0]["state"] == "classified"]) == 10, 300,
                     "ten classified stories")
            stories = stored_stories(config)
            for number, (row, provenance) in stories.items():
                assert_story_is_the_article(number, row, provenance, site)
                # the text the classification API received is the extracted article
                assert story_lead(number) in received[story_title(number)]
                assert BODY[2] in received[story_title(number)]
                detail = httpx.get(f"{url}/v1/items/{row['id']}").json()
                assert len(detail["predictions"]) == 1, json.dumps(detail)[:500]
                assert detail["predictions"][0]["requested"] == "base"
            samples = scrape(url)
            assert sample(samples, "signals_ingest_link_fetches_total",
                          host=site.base.removeprefix("http://"), status="ok") == 10
            assert sample(samples, "signals_ingest_classified_items_total",
                          role="primary") == 10
