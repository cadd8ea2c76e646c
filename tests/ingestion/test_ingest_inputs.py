"""Bad input, duplicates and feedback, against the real ingestion service on real HTTP.

No model is needed here: the classification API is left unreachable, so items stay
pending, which is exactly what these tests want to look at.
"""

from __future__ import annotations

import asyncio
import imaplib
import subprocess
import sys
import time
from email.message import EmailMessage

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import Response

from ingestion.api import create_ingest_app
from ingestion.config import FeedSourceConfig, ImapSourceConfig, IngestConfig
from tests.conftest import free_port, serve_app
from tests.ingestion.test_ingest_support import sample, scrape, wait_for

RSS = b"""<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>Good</title><link>http://example.com/</link>
<item><title>Acme to buy Beta</title><guid>g1</guid><pubDate>Mon, 06 Apr 1987 10:00:00 GMT</pubDate>
<description>Acme Corp said it agreed to acquire Beta Inc for 40 mln dlrs in cash.</description></item>
<item><title>Gamma quarterly net</title><guid>g2</guid><pubDate>Mon, 06 Apr 1987 11:00:00 GMT</pubDate>
<description>Gamma Corp reported first quarter net profit of 1.2 mln dlrs.</description></item>
<item><title>Delta plans bid</title><guid>g3</guid><pubDate>Mon, 06 Apr 1987 12:00:00 GMT</pubDate>
<description>Delta Group said it is considering an offer for all shares of Epsilon.</description>
"""  # cut off inside the third item: malformed, two entries recoverable


def bad_feeds_app() -> FastAPI:
    """Real HTTP endpoints that misbehave the ways feeds do."""
    app = FastAPI()

    @app.get("/slow")
    async def slow():
        await asyncio.sleep(2)
        return Response(RSS, media_type="application/rss+xml")

    @app.get("/error")
    async def error():
        return Response("upstream broke", status_code=500)

    @app.get("/garbage")
    async def garbage():
        return Response(b"\x00\x9f\xffthis is not <xml at all \x01\x02", media_type="text/html")

    @app.get("/truncated")
    async def truncated():
        return Response(RSS, media_type="application/rss+xml")

    return app


def no_item_email() -> bytes:
    message = EmailMessage()
    message["Subject"] = "Your weekly digest"
    message["From"] = "news@example.com"
    message["Message-ID"] = "<empty-1@example.com>"
    message["Date"] = "Mon, 06 Apr 1987 10:00:00 +0000"
    message.set_content("<html><body><p>   </p></body></html>", subtype="html")
    return bytes(message)


@pytest.fixture
def unreachable_api() -> str:
    return f"http://127.0.0.1:{free_port()}"


def test_bad_feeds_and_files_are_logged_counted_and_survived(tmp_path, unreachable_api, caplog):
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "digest.eml").write_bytes(no_item_email())
    (drop / "records.jsonl").write_text(
        '{"id": "r1", "title": "Zeta to merge with Eta", "text": "Zeta and Eta agreed to merge."}\n'
        'this line is not json\n'
        '{"id": "r2", "signal": 7, "title": "bad label"}\n')
    with serve_app(bad_feeds_app()) as feeds:
        config = IngestConfig(
            database_url=f"sqlite:///{tmp_path / 'ingest.db'}", classifier_url=unreachable_api,
            feed_timeout_s=0.5, drop_dir=drop, drop_interval_s=0.2, retry_initial_s=5,
            feeds=[FeedSourceConfig(name=name, url=f"{feeds}/{name}", interval_s=0.3,
                                    allow_networks=["127.0.0.0/8"])
                   for name in ("slow", "error", "garbage", "truncated")])
        with serve_app(create_ingest_app(config)) as url:
            def counted():
                s = scrape(url)
                wanted = [("slow", "timeout"), ("error", "http_status"),
                          ("garbage", "not_a_feed"), ("truncated", "malformed"),
                          ("drop", "no_items")]
                # ... and the drop directory's second file read (files go in name order)
                return all(sample(s, "signals_ingest_source_errors_total", source=src, kind=k)
                           for src, k in wanted) and sample(
                    s, "signals_ingest_source_polls_total", source="drop", outcome="ok") == 2 and s
            samples = wait_for(counted, 30, "every bad source counted")
            assert httpx.get(f"{url}/health").json() == {"status": "ok"}
            # the truncated feed still gave its two complete items, once, however often polled
            assert sample(samples, "signals_ingest_items_accepted_total", source="truncated") == 2
            assert sample(samples, "signals_ingest_items_skipped_total", source="truncated") >= 1
            # the JSONL's good record is in, its two bad lines skipped and counted
            assert sample(samples, "signals_ingest_items_accepted_total", source="drop") == 1
            assert sample(samples, "signals_ingest_items_skipped_total", source="drop") == 2
            # polled again and again, the same entries are recognised, not stored again
            wait_for(lambda: sample(scrape(url), "signals_ingest_duplicates_total",
                                    source="truncated", kind="repeat"), 10, "a re-poll")
            # store-derived gauges come from a snapshot cached for 2 s: wait it out, then
            # the count must be exactly 3 and stay there
            wait_for(lambda: sample(scrape(url), "signals_ingest_stored_items") == 3, 10,
                     "three stored items")
            time.sleep(2.5)
            assert sample(scrape(url), "signals_ingest_stored_items") == 3
            assert sorted(p.name for p in (drop / "processed").iterdir()) == [
                "digest.eml", "records.jsonl"]
    log = caplog.text
    assert "timed out" in log and "HTTP 500" in log and "not an RSS or Atom feed" in log
    assert "digest.eml has no items" in log


def test_push_dedupes_against_everything_seen(db_url, unreachable_api):
    """The ingestion HTTP path, on SQLite and on PostgreSQL (``db_url``)."""
    config = IngestConfig(database_url=db_url,
                          classifier_url=unreachable_api, retry_initial_s=5)
    body = ("Acme Corp said on Monday it agreed to acquire Beta Industries Inc for about 40 "
            "mln dlrs in cash, subject to approval by Beta shareholders and regulators. The "
            "companies said the combined group would have sales of 300 mln dlrs a year and "
            "that Beta management would stay on after the deal closes later this year.")
    original = {"id": "a1", "title": "Acme to acquire Beta", "text": body}
    with serve_app(create_ingest_app(config)) as url:
        first = httpx.post(f"{url}/v1/items", json={"articles": [original]}).json()
        assert first["accepted"] == 1
        item_id = first["results"][0]["item_id"]
        again = httpx.post(f"{url}/v1/items", json={"articles": [
            original,                                                  # the same item again
            {**original, "id": "a2", "title": "ACME TO ACQUIRE BETA!"},  # same normalised text
            {**original, "id": "a3", "text": body + " Shares of Beta rose 2 dlrs."},  # near copy
            {"id": "b1", "title": "Gamma quarterly results", "text": "Gamma earned 1 mln."},
        ], "source": "push"}).json()
        kinds = [(r["status"], r["duplicate_kind"]) for r in again["results"]]
        assert kinds == [("duplicate", "repeat"), ("duplicate", "exact"),
                         ("duplicate", "near"), ("accepted", None)]
        assert all(r["item_id"] == item_id for r in again["results"][:3])
        samples = scrape(url)
        for kind in ("repeat", "exact", "near"):
            assert sample(samples, "signals_ingest_duplicates_total", source="push",
                          kind=kind) == 1
        wait_for(lambda: sample(scrape(url), "signals_ingest_stored_items") == 2, 10,
                 "two stored items (the store gauges' snapshot is cached for 2 s)")
        # feedback naming a copy by its source id reaches the stored item
        answer = httpx.post(f"{url}/v1/feedback", json={"external_id": "a3", "label": 1})
        assert answer.status_code == 200 and answer.json()["item_id"] == item_id

    # a restart rebuilds the near-duplicate index from the stored signatures
    with serve_app(create_ingest_app(config)) as url:
        near = httpx.post(f"{url}/v1/items", json={"article": {
            **original, "id": "a4", "text": body + " Beta shares rose."}}).json()
        assert near["results"][0]["duplicate_kind"] == "near"


@pytest.mark.parametrize("body, status, kind", [
    ({"articles": []}, 422, "invalid_request"),
    ({}, 422, "invalid_request"),
    ({"article": {"title": "no id"}}, 422, "invalid_request"),
])
def test_bad_pushes_are_4xx_with_a_message(tmp_path, unreachable_api, body, status, kind):
    config = IngestConfig(database_url=f"sqlite:///{tmp_path / 'ingest.db'}",
                          classifier_url=unreachable_api)
    with serve_app(create_ingest_app(config)) as url:
        response = httpx.post(f"{url}/v1/items", json=body)
        assert response.status_code == status
        assert response.json()["error"]["type"] == kind and response.json()["error"]["message"]
        malformed = httpx.post(f"{url}/v1/items", content=b'{"article": ',
                               headers={"content-type": "application/json"})
        assert malformed.status_code == 400
        assert malformed.json()["error"]["type"] == "malformed_json"
        assert sample(scrape(url), "signals_ingest_api_errors_total", kind=kind) >= 1


def test_feedback_unknown_duplicate_conflict_replace_and_bulk(db_url, unreachable_api):
    config = IngestConfig(database_url=db_url,
                          classifier_url=unreachable_api)
    with serve_app(create_ingest_app(config)) as url:
        pushed = httpx.post(f"{url}/v1/items", json={"articles": [
            {"id": "x1", "title": "Theta bids for Iota", "text": "Theta offered 5 dlrs a share."},
            {"id": "x2", "title": "Kappa results", "text": "Kappa earned 3 mln dlrs."}]}).json()
        first_id = pushed["results"][0]["item_id"]

        unknown = httpx.post(f"{url}/v1/feedback", json={"item_id": 999, "label": 1})
        assert unknown.status_code == 404
        assert unknown.json()["error"]["type"] == "item_not_found"
        unknown_ext = httpx.post(f"{url}/v1/feedback", json={"external_id": "nope", "label": 0})
        assert unknown_ext.status_code == 404 and "nope" in unknown_ext.json()["error"]["message"]

        ok = httpx.post(f"{url}/v1/feedback", json={"item_id": first_id, "label": 1,
                                                    "source": "analyst", "note": "clear bid"})
        assert ok.status_code == 200 and ok.json()["outcome"] == "recorded"
        again = httpx.post(f"{url}/v1/feedback", json={"item_id": first_id, "label": 1,
                                                       "source": "analyst"})
        assert again.status_code == 200 and again.json()["outcome"] == "duplicate"
        conflict = httpx.post(f"{url}/v1/feedback", json={"item_id": first_id, "label": 0,
                                                          "source": "analyst"})
        assert conflict.status_code == 409
        assert "replace" in conflict.json()["error"]["message"]
        replaced = httpx.post(f"{url}/v1/feedback", json={"item_id": first_id, "label": 0,
                                                          "source": "analyst", "replace": True})
        assert replaced.json()["outcome"] == "replaced"
        # a lower-priority source does not override the analyst
        httpx.post(f"{url}/v1/feedback", json={"item_id": first_id, "label": 1,
                                               "source": "trend"})
        item = httpx.get(f"{url}/v1/items/{first_id}").json()
        assert (item["label"], item["label_source"]) == (0, "analyst")
        assert {f["source"]: f["label"] for f in item["feedback"]} == {"analyst": 0, "trend": 1}

        bulk = httpx.post(f"{url}/v1/feedback", json={"feedback": [
            {"external_id": "x2", "label": 0, "source": "teacher"},
            {"external_id": "x2", "label": 0, "source": "teacher"},
            {"item_id": 12345, "label": 1},
        ]})
        assert bulk.status_code == 200
        assert bulk.json()["counts"] == {"recorded": 1, "duplicate": 1, "unknown_item": 1}
        invalid = httpx.post(f"{url}/v1/feedback", json={"item_id": first_id, "label": 2})
        assert invalid.status_code == 422

        samples = scrape(url)
        assert sample(samples, "signals_ingest_feedback_total", source="analyst",
                      outcome="unknown_item") == 3
        assert sample(samples, "signals_ingest_feedback_total", source="analyst",
                      outcome="duplicate") == 1
        assert sample(samples, "signals_ingest_feedback_total", source="analyst",
                      outcome="conflict") == 1
        assert sample(samples, "signals_ingest_feedback_total", source="teacher",
                      outcome="duplicate") == 1
        assert httpx.get(f"{url}/v1/items/424242").status_code == 404


@pytest.fixture
def imap_mailbox(tmp_path, monkeypatch):
    """A real IMAP server (pymap, in-memory backend) on a loopback port holding two
    newsletters: one with two stories, one with none."""
    pytest.importorskip("pymap")
    port = free_port()
    log_path = tmp_path / "pymap.log"
    with open(log_path, "wb") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-c", "import sys; from pymap.main import main; sys.exit(main())",
             "--host", "127.0.0.1", "--port", str(port), "--no-service", "admin",
             "--no-service", "managesieve", "dict", "--demo-user", "reader",
             "--demo-password", "pw"], stdout=log_file, stderr=subprocess.STDOUT)
    try:
        connection = wait_for(lambda: _imap_login(port), 30, "the IMAP server")
        assert connection.create("News")[0] == "OK"
        stories = EmailMessage()
        stories["Subject"], stories["Message-ID"] = "Deals this week", "<deals-1@example.com>"
        stories["Date"] = "Mon, 06 Apr 1987 10:00:00 +0000"
        stories.set_content(
            "<html><body><p>Hello readers</p><h2>Omega buys Sigma</h2><p>Omega Corp agreed to "
            "buy Sigma Ltd for 12 mln dlrs.</p><h2>Tau opens plant</h2><p>Tau Inc opened a "
            "new plant in Ohio.</p></body></html>", subtype="html")
        for message in (bytes(stories), no_item_email()):
            assert connection.append("News", None, None, message)[0] == "OK"
        connection.logout()
        monkeypatch.setenv("TEST_INGEST_IMAP_PASSWORD", "pw")
        yield port
    finally:
        server.terminate()
        server.wait(10)


def _imap_login(port: int):
    try:
        connection = imaplib.IMAP4("127.0.0.1", port, timeout=5)
    except OSError:
        return None
    connection.login("reader", "pw")
    return connection


def test_imap_newsletters_are_ingested_once(tmp_path, unreachable_api, imap_mailbox):
    mailbox = ImapSourceConfig(host="127.0.0.1", port=imap_mailbox, security="none",
                               username="reader", password_env="TEST_INGEST_IMAP_PASSWORD",
                               mailbox="News", criteria="ALL", source="inbox",
                               interval_s=0.3, lookback_days=None)
    wrong = mailbox.model_copy(update={"source": "wrong-box", "mailbox": "Nope"})
    config = IngestConfig(database_url=f"sqlite:///{tmp_path / 'ingest.db'}",
                          classifier_url=unreachable_api, retry_initial_s=5,
                          imap=[mailbox, wrong])
    with serve_app(create_ingest_app(config)) as url:
        samples = wait_for(lambda: (s := scrape(url)) and (sample(
            s, "signals_ingest_duplicates_total", source="inbox", kind="repeat") or 0) >= 2
            and s, 30, "two polls of the mailbox")
        assert sample(samples, "signals_ingest_items_accepted_total", source="inbox") == 2
        assert sample(samples, "signals_ingest_source_errors_total", source="wrong-box",
                      kind="connection") >= 1
        titles = {httpx.get(f"{url}/v1/items/{i}").json()["title"] for i in (1, 2)}
        assert titles == {"Omega buys Sigma", "Tau opens plant"}
        assert httpx.get(f"{url}/v1/items/3").status_code == 404


def test_a_feed_that_asks_to_wait_is_not_polled_before_its_retry_after(tmp_path,
                                                                       unreachable_api):
    # The same Retry-After reader as the link and trends stages: the server's first
    # answer is 429 with "Retry-After: 2"; polled every 0.2 s, the feed is not fetched
    # again for those 2 s (about ten polls deferred), then read normally.
    hits: list[float] = []
    app = FastAPI()

    @app.get("/busy")
    async def busy():
        hits.append(time.monotonic())
        if len(hits) == 1:
            return Response("slow down", status_code=429, headers={"Retry-After": "2"})
        return Response(RSS, media_type="application/rss+xml")

    with serve_app(app) as feeds:
        config = IngestConfig(
            database_url=f"sqlite:///{tmp_path / 'ingest.db'}", classifier_url=unreachable_api,
            retry_initial_s=5, feeds=[FeedSourceConfig(
                name="busy", url=f"{feeds}/busy", interval_s=0.2,
                allow_networks=["127.0.0.0/8"])])
        with serve_app(create_ingest_app(config)) as url:
            samples = wait_for(lambda: (s := scrape(url)) and sample(
                s, "signals_ingest_items_accepted_total", source="busy") == 2 and s,
                20, "the feed read after its Retry-After")
    assert len(hits) >= 2
    assert hits[1] - hits[0] >= 1.9  # nothing fetched while the server asked to wait
    assert sample(samples, "signals_ingest_source_errors_total", source="busy",
                  kind="http_status") == 1
    assert sample(samples, "signals_ingest_source_polls_total", source="busy",
                  outcome="deferred") >= 5
