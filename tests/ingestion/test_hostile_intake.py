"""One poison record never stalls a source or costs its batch (issue 29): items no store
can hold (edge-of-range dates, an over-long id, NUL characters) are rejected with a
reason, counted, and the rest stored, once, on SQLite and on PostgreSQL, over real HTTP;
the drop directory reads only complete files and moves one that keeps failing aside."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from ingestion.api import create_ingest_app
from ingestion.config import FeedSourceConfig, IngestConfig
from ingestion.intake import Intake
from ingestion.metrics import IngestMetrics
from ingestion.pollers import DROP_ATTEMPTS, Pollers
from ingestion.store import Store
from pipeline import feeds
from pipeline.link_settings import LinkSettings
from tests.conftest import free_port, serve_app
from tests.ingestion.test_ingest_support import sample, scrape, wait_for
from tests.pipeline.link_site import article_html, story_lead

BODY = ("Acme Corp said on Monday it agreed to acquire Beta Industries Inc for about {n} "
        "mln dlrs in cash, subject to approval by Beta shareholders and regulators.")


def good(n: int) -> dict:
    words = " ".join(f"w{n}x{k}" for k in range(30))  # unlike each other: no near copies
    return {"id": f"good-{n}", "title": f"Deal number {n}",
            "text": BODY.format(n=n) + " " + words, "date_published": "1987-04-06"}


POISON = [
    ({"id": "year-one", "title": "Old", "text": "Edge of the calendar, east of UTC.",
      "date_published": "0001-01-01T00:00:00+14:00"}, "date_range"),
    ({"id": "x" * 10_000, "title": "Long id", "text": "A feed entry whose id is its link."},
     "id_length"),
    ({"id": "nul", "title": "Nul", "text": "A NUL \u0000 inside the text."}, "nul_character"),
    ({"id": "year-9999", "title": "Late", "text": "Edge of the calendar, west of UTC.",
      "date_published": "9999-12-31T23:59:59-12:00"}, "date_range"),
]


@pytest.fixture
def unreachable_api() -> str:
    return f"http://127.0.0.1:{free_port()}"


def test_a_poison_item_mid_batch_is_rejected_and_the_rest_stored_once(db_url, unreachable_api):
    config = IngestConfig(database_url=db_url, classifier_url=unreachable_api,
                          retry_initial_s=5, metrics_cache_s=0)
    batch = [good(1), POISON[0][0], good(2), POISON[1][0], POISON[2][0], good(3),
             POISON[3][0]]
    with serve_app(create_ingest_app(config)) as url:
        first = httpx.post(f"{url}/v1/items", json={"articles": batch}, timeout=60)
        assert first.status_code == 200, first.text
        answer = first.json()
        assert (answer["accepted"], answer["duplicates"], answer["rejected"]) == (3, 0, 4)
        results = answer["results"]
        assert [r["status"] for r in results] == ["accepted", "rejected", "accepted",
                                                  "rejected", "rejected", "accepted",
                                                  "rejected"]
        rejected = [r for r in results if r["status"] == "rejected"]
        assert [r["error"]["type"] for r in rejected] == [kind for _, kind in POISON]
        assert all(r["item_id"] is None and r["error"]["message"] for r in rejected)
        assert len(rejected[1]["external_id"]) < 100  # the id is shortened in the answer
        # sent again: the good ones are duplicates, the poison rejected again, nothing new
        again = httpx.post(f"{url}/v1/items", json={"articles": batch}, timeout=60).json()
        assert (again["accepted"], again["duplicates"], again["rejected"]) == (3 - 3, 3, 4)
        stored = [httpx.get(f"{url}/v1/items/{r['item_id']}", timeout=10).json()
                  for r in results if r["status"] == "accepted"]
        assert sorted(i["external_id"] for i in stored) == ["good-1", "good-2", "good-3"]
        assert httpx.get(f"{url}/v1/items/4", timeout=10).status_code == 404
        samples = scrape(url)
        for reason, count in (("date_range", 4), ("id_length", 2), ("nul_character", 2)):
            assert sample(samples, "signals_ingest_items_refused_total", source="push",
                          reason=reason) == count
        assert sample(samples, "signals_ingest_stored_items") == 3


@pytest.mark.parametrize("since", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59",
                                   "9999-12-31T23:59:59-10:00", "1850-01-01T00:00:00Z"])
def test_signals_since_outside_the_stored_range_is_a_bound_not_an_error(db_url, unreachable_api,
                                                                        since):
    config = IngestConfig(database_url=db_url, classifier_url=unreachable_api,
                          retry_initial_s=5)
    with serve_app(create_ingest_app(config)) as url:
        answer = httpx.get(f"{url}/v1/signals", params={"since": since}, timeout=10)
        assert answer.status_code == 200, answer.text  # was a bare 500 from the store
        assert answer.json() == {"signals": []}
        fine = httpx.get(f"{url}/v1/signals", params={"since": "1987-04-01T00:00:00Z"},
                         timeout=10)
        assert fine.status_code == 200 and fine.json() == {"signals": []}


def test_a_since_bound_is_clamped_into_the_stored_range_in_utc():
    from datetime import datetime, timedelta, timezone

    from ingestion.schema import EARLIEST_STORED, LATEST_STORED, clamp_to_stored

    plus_14 = timezone(timedelta(hours=14))
    assert clamp_to_stored(datetime(1, 1, 1, tzinfo=plus_14)) == EARLIEST_STORED
    assert clamp_to_stored(datetime(9999, 12, 31, 23, tzinfo=timezone(-timedelta(hours=10)))) \
        == LATEST_STORED
    assert clamp_to_stored(datetime(1850, 1, 1)) == EARLIEST_STORED
    assert clamp_to_stored(datetime(1987, 4, 1, 12, tzinfo=plus_14)) == \
        datetime(1987, 3, 31, 22, tzinfo=timezone.utc)  # in range: only converted to UTC
    assert clamp_to_stored(datetime(1987, 4, 1)) == datetime(1987, 4, 1, tzinfo=timezone.utc)


def test_a_poison_drop_file_does_not_stall_the_files_after_it(tmp_path, unreachable_api):
    drop = tmp_path / "drop"
    drop.mkdir()
    lines = [POISON[0][0], good(1), POISON[2][0], good(2)]
    (drop / "a-poison.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (drop / "b-later.jsonl").write_text(json.dumps(good(3)) + "\n")
    (drop / ".c-being-written.jsonl").write_text(json.dumps(good(4)) + "\n")
    config = IngestConfig(database_url=f"sqlite:///{tmp_path / 'ingest.db'}",
                          classifier_url=unreachable_api, drop_dir=drop, drop_interval_s=0.2,
                          retry_initial_s=5, metrics_cache_s=0)
    with serve_app(create_ingest_app(config)) as url:
        wait_for(lambda: sorted(p.name for p in (drop / "processed").glob("*")) == [
            "a-poison.jsonl", "b-later.jsonl"], 30, "both files processed")
        samples = wait_for(lambda: (s := scrape(url)) and sample(
            s, "signals_ingest_stored_items") == 3 and s, 10, "three items stored")
        assert sample(samples, "signals_ingest_items_refused_total", source="drop",
                      reason="date_range") == 1
        assert sample(samples, "signals_ingest_items_refused_total", source="drop",
                      reason="nul_character") == 1
    assert (drop / ".c-being-written.jsonl").exists()  # a hidden name is never read


def test_a_drop_file_is_read_only_once_it_stopped_changing(tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    stored: list[str] = []

    async def accept(articles, source):
        stored.extend(str(a.id) for a in articles)
        return []

    pollers = Pollers(IngestMetrics(), accept, drop)
    path = drop / "growing.jsonl"
    path.write_text('{"id": "one", "title": "One", "text": "First line."}\n')
    assert asyncio.run(pollers.scan_drop_dir()) == 0 and stored == []  # first sight
    with path.open("a") as file:  # the writer appends between two scans
        file.write('{"id": "two", "title": "Two", "text": "Second line."}\n')
    asyncio.run(pollers.scan_drop_dir())
    assert stored == [] and path.exists()
    asyncio.run(pollers.scan_drop_dir())  # unchanged since the last scan: complete
    assert stored == ["one", "two"] and (drop / "processed" / "growing.jsonl").exists()


def test_a_drop_file_that_keeps_failing_moves_to_failed_with_its_reason(tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    calls = []

    async def accept(articles, source):
        calls.append(len(articles))
        raise RuntimeError("the store is read-only")

    pollers = Pollers(IngestMetrics(), accept, drop)
    (drop / "records.jsonl").write_text('{"id": "r", "title": "R", "text": "Text."}\n')
    for _ in range(DROP_ATTEMPTS):  # the first scan only sees it; then DROP_ATTEMPTS - 1
        asyncio.run(pollers.scan_drop_dir())
    assert (drop / "records.jsonl").exists() and len(calls) == DROP_ATTEMPTS - 1
    asyncio.run(pollers.scan_drop_dir())
    assert len(calls) == DROP_ATTEMPTS and not (drop / "records.jsonl").exists()
    reason = (drop / "failed" / "records.jsonl.reason").read_text()
    assert "read-only" in reason and f"{DROP_ATTEMPTS} scans" in reason
    assert (drop / "failed" / "records.jsonl").exists()


def test_link_only_items_whose_fetch_failed_are_never_merged(tmp_path, unreachable_api):
    """Three newsletter entries that are only links, to pages that cannot be fetched
    (loopback: refused by the address policy), are three items; the same link again
    (another tracking parameter) is the one item it was."""
    config = IngestConfig(database_url=f"sqlite:///{tmp_path / 'ingest.db'}",
                          classifier_url=unreachable_api, retry_initial_s=5,
                          links=LinkSettings(cache_path=tmp_path / "cache.sqlite"))
    links = [f"http://127.0.0.1:9/story/{n}" for n in (1, 2, 3)]
    with serve_app(create_ingest_app(config)) as url:
        answer = httpx.post(f"{url}/v1/items", timeout=60, json={"articles": [
            {"id": f"entry-{n}", "link": link} for n, link in enumerate(links)]}).json()
        assert [r["status"] for r in answer["results"]] == ["accepted"] * 3, answer
        assert len({r["item_id"] for r in answer["results"]}) == 3
        same = httpx.post(f"{url}/v1/items", timeout=60, json={"articles": [
            {"id": "entry-again", "link": links[1] + "?utm_source=letter"}]}).json()
        (result,) = same["results"]
        assert result["status"] == "duplicate" and result["duplicate_kind"] == "exact"
        assert result["item_id"] == answer["results"][1]["item_id"]
        item = httpx.get(f"{url}/v1/items/{result['item_id']}", timeout=10).json()
        assert item["link"] == links[1]
        assert item["link_provenance"]["fetch_status"] == "blocked_address"
        # a refused address cannot mend: skipped at once, with its reason, and counted
        assert item["state"] == "skipped" and "blocked_address" in item["last_error"]
        assert sample(scrape(url), "signals_ingest_link_waits_total", outcome="skipped") == 3


class FlakySite:
    """Pages that answer 503 until ``up`` names them."""

    def __init__(self):
        self.up: set[str] = set()
        self.hits: dict[str, int] = {}
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format, *args):
                pass

            def do_GET(self):  # noqa: N802
                site.hits[self.path] = site.hits.get(self.path, 0) + 1
                if self.path == "/robots.txt":
                    body, status = b"User-agent: *\nAllow: /\n", 200
                elif self.path in site.up:
                    body = article_html(f"Story at {self.path}", story_lead(7)).encode()
                    status = 200
                else:
                    body, status = b"busy", 503
                self.send_response(status)
                self.send_header("Content-Type", "text/html; charset=utf-8"
                                 if status == 200 else "text/plain")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_link_only_item_waits_for_its_page_and_is_skipped_after_the_attempts(
        db_url, unreachable_api, tmp_path):
    """A link-only item whose page answers 503 is stored ``awaiting_link``, not
    classified on nothing; once the page answers it takes the page's text and is
    pending; one that never answers is skipped after ``link_max_attempts`` fetches,
    with its reason, counted: nothing lost, nothing merged."""
    site = FlakySite()
    config = IngestConfig(
        database_url=db_url, classifier_url=unreachable_api, retry_initial_s=5,
        metrics_cache_s=0, link_max_attempts=4, link_retry_interval_s=1.0,
        links=LinkSettings(cache_path=tmp_path / "cache.sqlite", max_attempts=1,
                           per_host_interval_s=0, allow_networks=["127.0.0.0/8"]))
    try:
        with serve_app(create_ingest_app(config)) as url:
            answer = httpx.post(f"{url}/v1/items", timeout=60, json={"articles": [
                {"id": "later", "link": f"{site.base}/later"},
                {"id": "never", "link": f"{site.base}/never"}]}).json()
            assert [r["status"] for r in answer["results"]] == ["accepted"] * 2, answer
            later, never = (r["item_id"] for r in answer["results"])
            item = httpx.get(f"{url}/v1/items/{later}", timeout=10).json()
            assert item["state"] == "awaiting_link" and item["text"] == ""
            assert "503" in item["last_error"]
            site.up.add("/later")

            def state(item_id):
                return httpx.get(f"{url}/v1/items/{item_id}", timeout=10).json()

            read = wait_for(lambda: (i := state(later))["state"] == "pending" and i, 30,
                            "the page read on a retry")
            assert read["title"] == "Story at /later" and "Company 7" in read["text"]
            assert read["link_provenance"]["fetch_status"] == "ok"
            # (then the classify loop takes it: the API is unreachable here, it stays pending)
            gone = wait_for(lambda: (i := state(never))["state"] == "skipped" and i, 30,
                            "skipped after its attempts")
            assert "after 4 fetches" in gone["last_error"] and gone["attempts"] == 4
            assert site.hits["/never"] == 4
            samples = scrape(url)
            for outcome, count in (("waiting", 2), ("filled", 1), ("skipped", 1)):
                assert sample(samples, "signals_ingest_link_waits_total",
                              outcome=outcome) == count
            assert sample(samples, "signals_ingest_stored_items") == 2
            # the same links again: the same two items, nothing new
            again = httpx.post(f"{url}/v1/items", timeout=60, json={"articles": [
                {"id": "later-2", "link": f"{site.base}/later"},
                {"id": "never-2", "link": f"{site.base}/never"}]}).json()
            assert [r["item_id"] for r in again["results"]] == [later, never], again
    finally:
        site.close()


def test_one_poison_feed_entry_is_skipped_and_the_rest_of_the_feed_stored(
        tmp_path, monkeypatch):
    """A feed entry without a guid uses its link as its id: a 10,000-character link is
    refused (counted under the feed's name), the entries around it are stored, once."""
    def entry(n: int, guid: str) -> str:
        return (f"<item><title>Deal number {n}</title><guid>{guid}</guid>"
                f"<description>{good(n)['text']}</description></item>")

    rss = ('<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
           "<title>T</title>" + entry(1, "g1") + entry(2, "https://x.example/" + "a" * 10_000)
           + entry(3, "g3") + "</channel></rss>").encode()
    monkeypatch.setattr("ingestion.pollers.read_feed",
                        lambda url, source, **settings: feeds.parse_feed(rss, source))
    store = Store(f"sqlite:///{tmp_path / 'ingest.db'}")
    metrics = IngestMetrics()
    intake = Intake(store, metrics, 0.8, 128, shadow=False)

    async def accept(articles, source):
        return intake.accept(articles, source)

    pollers = Pollers(metrics, accept)
    feed = FeedSourceConfig(name="wire", url="https://feeds.example/wire")
    try:
        assert asyncio.run(pollers.poll_feed(feed)) == 2
        assert asyncio.run(pollers.poll_feed(feed)) == 0  # polled again: nothing new
        assert store.item_count() == 2
        assert metrics.items_refused.labels("wire", "id_length")._value.get() == 2
        assert metrics.polls.labels("wire", "ok")._value.get() == 2
    finally:
        store.close()
