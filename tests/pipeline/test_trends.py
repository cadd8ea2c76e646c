"""The Google-Trends client against recorded Google answers served over real loopback HTTP.

pytrends' own request building and parsing run unchanged; only its base URL points at
the replay server. The recordings are in ``fixtures/trends`` (see ``synthesize.py``
there for how they were made and why they are not live captures).
"""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from pipeline.article import Article
from pipeline.labels import trend_vote
from pipeline.trends import (
    RequestPacer,
    TrendClient,
    TrendConfig,
    TrendFetchError,
    add_growth,
    add_growth_with_ray,
    complete_buckets,
    run_stage,
    window_start,
)
from tests.conftest import free_port

RECORDINGS = Path(__file__).parent / "fixtures" / "trends"
DAY = date(2023, 3, 14)
SSB, EV, NO_DATA = "solid-state battery", "electric vehicles", "energy storage"


# --------------------------------------------------------------------------- replay server


class RecordedTrends:
    """A loopback HTTP server answering pytrends' three requests from recordings.

    ``fail(keyword, times, status, headers)`` makes the next ``times`` explore requests
    for ``keyword`` fail; ``log`` lists every request as (monotonic time, kind, keyword).
    """

    def __init__(self) -> None:
        self.log: list[tuple[float, str, str]] = []
        self.failures: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self.tokens: dict[str, str] = {}
        for explore in RECORDINGS.glob("*.explore.txt"):
            widgets = json.loads(explore.read_text(encoding="utf-8")[4:])["widgets"]
            token = next(w["token"] for w in widgets if w["id"] == "TIMESERIES")
            self.tokens[token] = explore.name.removesuffix(".explore.txt")
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", free_port()), self._handler())
        self.base_url = f"http://127.0.0.1:{self._server.server_port}/trends"

    def fail(self, keyword: str, times: int, status: int = 429,
             headers: dict[str, str] | None = None) -> None:
        self.failures[keyword] = [(status, headers or {})] * times

    def count(self, kind: str, keyword: str | None = None) -> int:
        return sum(1 for _, k, kw in self.log if k == kind and keyword in (None, kw))

    def _handler(self):
        replay = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _send(self, status: int, body: str, content_type: str,
                      headers: dict[str, str] | None = None) -> None:
                data = body.encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _record(self, kind: str, keyword: str) -> None:
                with replay._lock:
                    replay.log.append((time.monotonic(), kind, keyword))

            def do_GET(self) -> None:  # noqa: N802
                url = urlparse(self.path)
                query = parse_qs(url.query)
                if url.path == "/trends/explore/":
                    self._record("cookie", "")
                    self._send(200, "<html></html>", "text/html",
                               {"Set-Cookie": "NID=511=replay; Path=/; HttpOnly"})
                elif url.path == "/trends/api/widgetdata/multiline":
                    name = replay.tokens.get(query["token"][0])
                    self._record("multiline", name.split("__")[0].replace("_", " ") if name else "")
                    if name is None:
                        self._send(400, "unknown token", "text/html")
                        return
                    body = (RECORDINGS / f"{name}.multiline.txt").read_text(encoding="utf-8")
                    self._send(200, body, "application/json; charset=utf-8")
                else:
                    self._send(404, "not found", "text/html")

            def do_POST(self) -> None:  # noqa: N802
                url = urlparse(self.path)
                if url.path != "/trends/api/explore":
                    self._send(404, "not found", "text/html")
                    return
                item = json.loads(parse_qs(url.query)["req"][0])["comparisonItem"][0]
                keyword, (start, end) = item["keyword"], item["time"].split(" ")
                self._record("explore", keyword)
                with replay._lock:
                    pending = replay.failures.get(keyword)
                    failure = pending.pop(0) if pending else None
                if failure is not None:
                    # Google's 429 is an HTML page, which pytrends turns into an exception.
                    self._send(failure[0], "<html>Too Many Requests</html>", "text/html",
                               failure[1])
                    return
                path = RECORDINGS / f"{keyword.replace(' ', '_')}__{start}__{end}.explore.txt"
                if not path.is_file():
                    self._send(400, f"no recording for {keyword} {start} {end}", "text/html")
                    return
                self._send(200, path.read_text(encoding="utf-8"), "application/json; charset=utf-8")

        return Handler

    def __enter__(self) -> RecordedTrends:
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def google() -> Iterator[RecordedTrends]:
    with RecordedTrends() as server:
        yield server


def make_config(google: RecordedTrends, tmp_path: Path, **overrides) -> TrendConfig:
    settings = {"base_url": google.base_url, "cache_path": tmp_path / "trends.sqlite",
                "min_interval_s": 0.0, "backoff_base_s": 1.0, "backoff_max_s": 60.0,
                "max_retries": 5, **overrides}
    return TrendConfig(**settings)


def article(**fields) -> Article:
    return Article(**{"id": 1042, "title": "Start-up unveils solid-state battery",
                      "date_published": datetime(2023, 3, 14, 9, 30),
                      "topics": [SSB, EV, NO_DATA], **fields})


def growth_from_raw_recording(topic: str, years: int) -> float:
    """The documented definition computed straight from the recorded JSON (no pytrends):
    drop buckets reaching past the article day, then compare the first and last year."""
    start = window_start(DAY, years)
    text = (RECORDINGS / f"{topic.replace(' ', '_')}__{start}__{DAY}.multiline.txt").read_text()
    points = [(datetime.fromtimestamp(int(p["time"]), timezone.utc).date(), p["value"][0])
              for p in json.loads(text[5:])["default"]["timelineData"]]
    weekly = (points[1][0] - points[0][0]).days == 7
    ends = [b[0] - timedelta(days=1) for b in points[1:]]
    last_start = points[-1][0]
    ends.append(last_start + timedelta(days=6) if weekly else
                (last_start.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1))
    points = [p for p, end in zip(points, ends) if end <= DAY]
    first = [v for d, v in points if d < start + timedelta(days=365)]
    last = [v for d, v in points if d > DAY - timedelta(days=365)]
    return round(100 * ((sum(last) / len(last)) / (sum(first) / len(first)) - 1), 1)


# --------------------------------------------------------------------------- growth numbers


def test_growth_from_recorded_google_answers(google, tmp_path):
    client = TrendClient(make_config(google, tmp_path))
    ssb = client.growth(SSB, DAY)
    ev = client.growth(EV, DAY)
    for topic, growth in ((SSB, ssb), (EV, ev)):
        assert growth.three_years == pytest.approx(growth_from_raw_recording(topic, 3), abs=0.05)
        assert growth.five_years == pytest.approx(growth_from_raw_recording(topic, 5), abs=0.05)
        assert growth.ten_years == pytest.approx(growth_from_raw_recording(topic, 10), abs=0.05)
    # Sustained growth keeps accumulating with the window; a recent surge does not.
    assert ssb.five_years / ssb.three_years >= 1.64 and ssb.ten_years / ssb.five_years >= 1.9
    assert ev.five_years / ev.three_years < 1.64
    # One cookie request, then explore + multiline per window.
    assert client.stats.http_requests == 1 + 2 * 6 == len(google.log)
    assert client.stats.windows_fetched == 6 and client.stats.cache_hits == 0


def test_buckets_reaching_past_the_article_day_are_dropped():
    weekly = [(date(2023, 2, 26), 90), (date(2023, 3, 5), 95), (date(2023, 3, 12), 100)]
    assert complete_buckets(weekly, date(2023, 3, 14)) == weekly[:2]
    assert complete_buckets(weekly, date(2023, 3, 18)) == weekly
    monthly = [(date(2023, 1, 1), 80), (date(2023, 2, 1), 90), (date(2023, 3, 1), 100)]
    assert complete_buckets(monthly, date(2023, 3, 14)) == monthly[:2]
    assert complete_buckets(monthly, date(2023, 3, 31)) == monthly


def test_cache_persists_across_client_instances(google, tmp_path):
    config = make_config(google, tmp_path)
    first = TrendClient(config).growth(SSB, DAY)
    requests_after_first = len(google.log)
    again = TrendClient(config)
    assert again.growth(SSB, DAY) == first
    assert len(google.log) == requests_after_first  # not even a cookie request
    assert again.stats.cache_hits == 3 and again.stats.http_requests == 0
    with sqlite3.connect(config.cache_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_topic_without_data_is_skipped_logged_counted_and_cached(google, tmp_path, caplog):
    config = make_config(google, tmp_path)
    with caplog.at_level(logging.WARNING, logger="pipeline.trends"):
        [labelled], report = add_growth([article()], TrendClient(config), progress=False)
    assert set(labelled.growth) == {SSB, EV}
    assert report.topics_measured == 2 and report.topics_without_data == 1
    assert any(NO_DATA in line and "no usable data" in line for line in caplog.messages)
    # "No data" is an answer too: it is cached, a re-run asks Google nothing.
    requests_before = len(google.log)
    [again], report2 = add_growth([article()], TrendClient(config), progress=False)
    assert len(google.log) == requests_before
    assert again.growth == labelled.growth and report2.topics_without_data == 1
    assert Article.from_record(labelled.to_record()) == labelled


def test_growth_already_known_is_kept_and_undated_articles_are_counted(google, tmp_path):
    known = {SSB: {"3_years": 1.0, "5_years": 2.0, "10_years": 4.0}}
    undated = Article(id="u", topics=[EV])
    [dated, still_undated], report = add_growth(
        [article(topics=[SSB], growth=known), undated],
        TrendClient(make_config(google, tmp_path)), progress=False)
    assert dated.growth[SSB].ten_years == 4.0 and still_undated.growth == {}
    assert report.articles_without_date == 1 and google.log == []


def test_trend_stage_feeds_the_trend_vote(google, tmp_path):
    articles = [article(), article(id=7, topics=[EV]), article(id=8, topics=[NO_DATA])]
    output = run_stage(articles, {"base_url": google.base_url, "min_interval_s": 0,
                                  "cache_path": str(tmp_path / "trends.sqlite")})
    assert output.counts["topics_measured"] == 2 and output.counts["topics_without_data"] == 1
    assert output.counts["trends_windows_fetched"] == 9
    # Sustained growth (solid-state battery) votes signal; a recent surge alone does not;
    # no data abstains.
    assert [trend_vote(a).label for a in output.articles] == [1, 0, None]
    with pytest.raises(ValueError, match="max_retries"):
        run_stage(articles, {"max_retries": -1})


# --------------------------------------------------------------------------- rate limits


def test_429_backs_off_exponentially_with_jitter_then_succeeds(google, tmp_path):
    google.fail(SSB, times=3, status=429)
    sleeps: list[float] = []
    client = TrendClient(make_config(google, tmp_path, backoff_base_s=2.0, backoff_jitter=0.5),
                         sleep=sleeps.append, rng=random.Random(7))
    growth = client.growth(SSB, DAY)
    assert growth.three_years == pytest.approx(growth_from_raw_recording(SSB, 3), abs=0.05)
    assert client.stats.retries == 3 and len(sleeps) == 3
    for retry, slept in enumerate(sleeps):  # 2, 4, 8 s, each cut by up to half
        assert 2.0 * 2 ** retry * 0.5 <= slept <= 2.0 * 2 ** retry
    assert len(set(sleeps)) == 3
    # 3 refused explore requests + one per window.
    assert google.count("explore", SSB) == 3 + 3


def test_retry_after_header_is_honoured(google, tmp_path):
    google.fail(SSB, times=1, status=429, headers={"Retry-After": "42"})
    sleeps: list[float] = []
    TrendClient(make_config(google, tmp_path), sleep=sleeps.append).growth(SSB, DAY)
    assert sleeps == [42.0]


def test_a_retry_after_http_date_is_honoured_as_the_link_stage_does(google, tmp_path):
    """Trends read only delta-seconds and fell back to 2 s for an HTTP-date; both stages
    now share ``pipeline.politeness.retry_after_seconds``."""
    from email.utils import format_datetime

    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=60), usegmt=True)
    google.fail(SSB, times=1, status=503, headers={"Retry-After": later})
    sleeps: list[float] = []
    TrendClient(make_config(google, tmp_path), sleep=sleeps.append).growth(SSB, DAY)
    assert len(sleeps) == 1 and 55 <= sleeps[0] <= 61


def test_backoff_delay_is_capped(google, tmp_path):
    client = TrendClient(make_config(google, tmp_path, backoff_base_s=30.0, backoff_max_s=100.0,
                                     backoff_jitter=0.0))
    assert [client.backoff_delay(r) for r in range(4)] == [30.0, 60.0, 100.0, 100.0]


def test_exhausted_retries_fail_that_topic_only_and_a_rerun_fetches_it(google, tmp_path, caplog):
    config = make_config(google, tmp_path, max_retries=2)
    google.fail(EV, times=100, status=429)
    sleeps: list[float] = []
    with caplog.at_level(logging.WARNING, logger="pipeline.trends"):
        [labelled], report = add_growth([article(topics=[SSB, EV])],
                                        TrendClient(config, sleep=sleeps.append), progress=False)
    assert set(labelled.growth) == {SSB}
    assert report.topics_failed == 1 and report.topics_measured == 1
    assert any("'electric vehicles'" in p and "HTTP 429 (after 3 attempts)" in p
               for p in report.problems)
    assert google.count("explore", EV) == 3 and len(sleeps) == 2
    # Google recovers: the re-run fetches only the failed topic's windows.
    google.failures.clear()
    google.log.clear()
    [relabelled], _ = add_growth([article(topics=[SSB, EV])], TrendClient(config), progress=False)
    assert set(relabelled.growth) == {SSB, EV}
    assert google.count("explore", SSB) == 0 and google.count("explore", EV) == 3


def test_non_retryable_answer_fails_at_once(google, tmp_path):
    google.fail(SSB, times=1, status=400)
    sleeps: list[float] = []
    with pytest.raises(TrendFetchError, match="HTTP 400"):
        TrendClient(make_config(google, tmp_path), sleep=sleeps.append).growth(SSB, DAY)
    assert sleeps == [] and google.count("explore", SSB) == 1


def test_pacer_spaces_slots():
    pacer = RequestPacer(min_interval_s=10.0)
    waits = [pacer.reserve() for _ in range(3)]
    assert waits[0] == 0.0
    assert waits[1] == pytest.approx(10.0, abs=0.5) and waits[2] == pytest.approx(20.0, abs=0.5)
    # A 429 seen by one worker pushes every later slot back.
    pacer = RequestPacer(min_interval_s=0.0)
    pacer.hold(30.0)
    assert pacer.reserve() == pytest.approx(30.0, abs=0.5)
    pacer.hold(1.0)  # never shortens a longer hold
    assert pacer.reserve() == pytest.approx(30.0, abs=0.5)


def test_backoff_is_reported_to_the_shared_pacer(google, tmp_path):
    google.fail(SSB, times=2, status=503)
    held: list[float] = []
    sleeps: list[float] = []
    TrendClient(make_config(google, tmp_path), sleep=sleeps.append,
                on_backoff=held.append).growth(SSB, DAY)
    assert held == sleeps and len(held) == 2


# --------------------------------------------------------------------------- crash and resume


class SimulatedCrash(Exception):
    pass


def test_resume_after_crash_fetches_only_what_is_missing(google, tmp_path):
    config = make_config(google, tmp_path)
    sent = 0

    def crash_on_eighth_request() -> None:
        nonlocal sent
        sent += 1
        if sent == 8:  # cookie + 3 windows of the first topic done, 4th window starting
            raise SimulatedCrash("power cut")

    with pytest.raises(SimulatedCrash):
        add_growth([article(topics=[SSB, EV])],
                   TrendClient(config, before_request=crash_on_eighth_request), progress=False)
    assert google.count("explore", SSB) == 3 and google.count("explore", EV) == 0
    google.log.clear()
    [resumed], report = add_growth([article(topics=[SSB, EV])], TrendClient(config),
                                   progress=False)
    # Only the 3 missing windows: a cookie, then explore + multiline each.
    assert report.stats.http_requests == 1 + 2 * 3 == len(google.log)
    assert google.count("explore", SSB) == 0 and google.count("explore", EV) == 3
    assert report.stats.cache_hits == 3
    assert resumed.growth[EV].ten_years == pytest.approx(growth_from_raw_recording(EV, 10), abs=0.05)


def test_malformed_cached_row_is_logged_counted_and_refetched(google, tmp_path, caplog):
    config = make_config(google, tmp_path)
    good = TrendClient(config).growth(SSB, DAY)
    with sqlite3.connect(config.cache_path) as db:
        db.execute("UPDATE interest SET points='[[\"2013-03-01\", \"lots\"]' "
                   "WHERE topic=? AND start=?", (SSB, "2013-03-14"))
    google.log.clear()
    client = TrendClient(config)
    with caplog.at_level(logging.WARNING, logger="pipeline.trends"):
        assert client.growth(SSB, DAY) == good
    assert client.stats.malformed_cache_rows == 1 and client.stats.cache_hits == 2
    assert google.count("explore") == 1
    assert any("malformed cached row" in line for line in caplog.messages)
    assert TrendClient(config).growth(SSB, DAY) == good  # the row was overwritten


# --------------------------------------------------------------------------- Ray shards


def test_ray_shards_share_cache_and_pacer_under_a_concurrency_cap(google, tmp_path):
    ray = pytest.importorskip("ray")
    interval = 0.15
    config = make_config(google, tmp_path, min_interval_s=interval, max_concurrent_shards=2)
    articles = [article(), article(id=1043, topics=[EV, SSB])]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        started = time.monotonic()
        labelled, report = add_growth_with_ray(articles, config, shards=3, progress=False)
    finally:
        ray.shutdown()
    sequential, _ = add_growth(articles, TrendClient(make_config(google, tmp_path / "seq")),
                               progress=False)
    assert [a.growth for a in labelled] == [a.growth for a in sequential]
    assert report.topics_measured == 2 and report.topics_without_data == 1
    # Three shards, never more than two at once.
    spans = sorted(report.shard_spans)
    assert len(spans) == 3
    assert max(sum(1 for s, f in spans if s <= t < f) for t, _ in spans) <= 2, spans
    # One pacer for all workers: the ray run's requests arrive spaced globally. A worker
    # stalled by a busy CPU between taking its slot and sending can shrink one gap, so
    # the check allows a few; two independently paced workers would shrink half of them.
    assert report.stats.windows_fetched == 9
    ray_requests = sorted(t for t, *_ in google.log[:report.stats.http_requests])
    gaps = [b - a for a, b in zip(ray_requests, ray_requests[1:])]
    assert sum(g >= interval * 0.8 for g in gaps) >= 0.85 * len(gaps), gaps
    assert ray_requests[-1] - started >= (len(ray_requests) - 1) * interval
    # Every window landed once in the shared cache: a new client asks Google nothing.
    with sqlite3.connect(config.cache_path) as db:
        assert db.execute("SELECT COUNT(*) FROM interest").fetchone()[0] == 9
    google.log.clear()
    add_growth(articles, TrendClient(config), progress=False)
    assert google.log == []
