"""Google-Trends growth of an article's topics over 3, 5 and 10 years, via pytrends.

**What the three numbers are.** For a topic and an article published on day ``D``,
``growth[topic].three_years`` (``3_years`` in the record) is the topic's growth in
search interest, in percent, over the 3 years ending on ``D``:

    100 × (mean interest in the window's last 12 months / mean in its first 12 months − 1)

where the window is ``[D − 3 years, D]``, fetched as one Google-Trends query; likewise
for 5 and 10 years. Why this definition:

* Google rescales every query to its own maximum (= 100), so absolute levels from
  different queries cannot be compared; a ratio of two means *within one query* is
  independent of that scaling, so the three windows may be three separate queries.
* Comparing whole years cancels seasonality (a topic that peaks every spring).
* It makes the seed's ratio rule (growth over 5 years ≥ 1.64 × growth over 3 years and
  over 10 years ≥ 1.9 × that over 5) mean *sustained* growth: a topic growing steadily
  accumulates growth roughly in proportion to the window (linear growth gives ratios
  of at least 2 and 2.25, compound growth more), while a topic whose rise happened only
  in the last couple of years shows about the same growth over 3, 5 and 10 years
  (ratios near 1) and fails. The original example fits: "solid-state battery"
  12.5 → 30.1 → 61.0 passes, "electric vehicles" 40.0 → 55.2 → 80.3 does not.
  (A plain mean level per window would fall, not rise, with the window length for a
  growing topic, so the rule could never fire.)
* No look-ahead: Google returns weekly (≤ 5 years) or monthly buckets, and the bucket
  holding ``D`` reaches past it; buckets that end after ``D`` are dropped.
* A horizon whose first-year mean is below ``min_base_interest`` has no meaningful
  growth (Google reports < 1 as 0) and is left ``None``.

**Fetching.** Each window is one ``build_payload`` + ``interest_over_time`` pair (two
HTTP requests), made by :class:`TrendClient`, which

* caches every answer (also "no data") in one SQLite file in WAL mode keyed by
  ``(topic, geo, category, window start, window end)``: nothing is fetched twice, across
  processes and restarts, so a crashed run resumes by running it again;
* spaces requests at least ``min_interval_s`` apart (:class:`RequestPacer`);
* backs off exponentially with jitter on HTTP 429 and 5xx (honouring ``Retry-After``)
  up to ``max_retries``, then raises :class:`TrendFetchError` for that topic only.

pytrends' own retry option is left off: it passes urllib3's removed
``method_whitelist`` argument and cannot honour Retry-After.

**Parallel shards** (:func:`add_growth_with_ray`) run as Ray tasks. Two Ray mechanisms
bound the load on Google: at most ``max_concurrent_shards`` tasks are in flight at once
(``ray.wait`` on the pending tasks, Ray's documented pattern for limiting pending
tasks, which needs no cluster-level custom resources), and every request of every
worker takes its turn from one :class:`RequestPacer` Ray actor, whose methods run one
at a time, so ``min_interval_s`` holds across the whole cluster; a worker that is
rate-limited also holds the pacer for its back-off delay, pausing the others.

``base_url`` points the client at Google (default) or at a local replay server: the
tests serve recorded Google responses over real loopback HTTP, so pytrends' own
request and parsing code runs unchanged.
"""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from statistics import fmean, median

import requests
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pytrends import exceptions as pytrends_errors
from pytrends import request as pytrends_request
from pytrends.request import TrendReq
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt
from tqdm import tqdm

from pipeline.article import Article, TopicGrowth
from pipeline.politeness import RequestPacer, retry_after_seconds
from pipeline.settings import Paths
from pipeline.stage import StageOutput

log = logging.getLogger(__name__)

HORIZONS_YEARS = (3, 5, 10)
"""The contract's three horizons (``TopicGrowth``'s ``3_years``, ``5_years``, ``10_years``)."""

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
"""Answers that say "later": rate limited or a transient server failure."""

Series = list[tuple[date, int]]
"""Interest over time: (bucket start, interest 0–100) in date order."""

_SERIES = TypeAdapter(Series)


class TrendConfig(BaseModel):
    """How growth is fetched from Google Trends and computed."""

    model_config = ConfigDict(extra="forbid")

    cache_path: Path = Field(
        default_factory=lambda: Paths().data_dir / "trends" / "interest.sqlite",
        description="SQLite file (WAL) caching every fetched window; shared by all "
        "processes and runs. Default ``<SIGNALS_DATA_DIR>/trends/interest.sqlite``.",
    )
    base_url: str = Field(
        default=pytrends_request.BASE_TRENDS_URL,
        description="Root of the Google-Trends API; a replay server's URL in tests.",
    )
    hl: str = Field(default="en-US", description="Interface language sent to Google (pytrends ``hl``).")
    tz: int = Field(default=0, description="Time-zone offset in minutes (pytrends ``tz``); 0 = UTC, "
                    "so bucket dates are UTC days like the articles'.")
    geo: str = Field(default="", description="Region code (``US``, ``GB``...); empty = worldwide.")
    category: int = Field(default=0, ge=0, description="Google-Trends category id; 0 = all.")
    edge_days: int = Field(
        default=365, ge=28, le=1095,
        description="Length of the first and last period compared in each window (a year "
        "cancels seasonality). Must fit twice into the 3-year window.")
    min_base_interest: float = Field(
        default=1.0, ge=0.0,
        description="Below this first-period mean interest a horizon's growth is undefined "
        "(None): Google reports interest under 1 as 0.")
    min_interval_s: float = Field(
        default=2.0, ge=0.0, description="Least time between two HTTP requests to Google, "
        "over all workers.")
    max_retries: int = Field(
        default=5, ge=0, description="Retries of one window after HTTP 429/5xx or a "
        "connection error, before the topic fails.")
    backoff_base_s: float = Field(
        default=30.0, ge=0.0, description="First back-off delay; doubles each retry.")
    backoff_max_s: float = Field(default=900.0, ge=0.0, description="Cap on one back-off delay.")
    backoff_jitter: float = Field(
        default=0.5, ge=0.0, le=1.0,
        description="Each delay d is drawn uniformly from [d × (1 − jitter), d], so "
        "workers rate-limited together do not retry together.")
    connect_timeout_s: float = Field(default=5.0, gt=0, description="HTTP connect timeout.")
    read_timeout_s: float = Field(default=30.0, gt=0, description="HTTP read timeout.")
    max_concurrent_shards: int = Field(
        default=4, ge=1, description="Ray tasks fetching at the same time (global cap).")
    ray_shards: int = Field(
        default=0, ge=0, description="Pipeline stage only: 0 fetches in the build's process; "
        "N > 0 splits the topics into N Ray tasks (ray.init() is called when Ray is not "
        "initialised yet).")
    cpus_per_shard: float = Field(
        default=0.25, gt=0, description="Ray CPUs one shard task reserves; fetching is "
        "I/O-bound, so a fraction.")

    @model_validator(mode="after")
    def _periods_fit_the_shortest_window(self) -> TrendConfig:
        if 2 * self.edge_days > 365 * min(HORIZONS_YEARS):
            raise ValueError(f"edge_days={self.edge_days}: two periods must fit into "
                             f"{min(HORIZONS_YEARS)} years")
        return self


# --------------------------------------------------------------------------- errors, stats


class TrendFetchError(Exception):
    """One window of one topic could not be fetched; other topics are unaffected."""

    def __init__(self, topic: str, start: date, end: date, attempts: int, reason: str) -> None:
        super().__init__(f"trends {topic!r} {start}..{end}: {reason} (after {attempts} attempts)")
        self.topic = topic
        self.start = start
        self.end = end
        self.attempts = attempts
        self.reason = reason


@dataclass
class TrendStats:
    """What a client did; merged over Ray shards."""

    http_requests: int = 0
    """Requests sent to Google (cookie, explore and multiline requests, retries included)."""
    windows_fetched: int = 0
    cache_hits: int = 0
    retries: int = 0
    malformed_cache_rows: int = 0
    """Cached rows that did not parse: logged, refetched and overwritten."""

    def add(self, other: TrendStats) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


# --------------------------------------------------------------------------- growth maths


def window_start(end: date, years: int) -> date:
    """``end`` moved back ``years`` calendar years (29 February becomes the 28th)."""
    try:
        return end.replace(year=end.year - years)
    except ValueError:
        return end.replace(year=end.year - years, day=28)


def complete_buckets(series: Series, end: date) -> Series:
    """The buckets that end on or before ``end`` (no interest from after the article).

    A bucket ends where the next begins; the last one is taken to be as long as the
    typical spacing (a week or a month).
    """
    if len(series) < 2:
        return list(series)
    spacing = timedelta(days=median((b[0] - a[0]).days for a, b in zip(series, series[1:])))
    kept = []
    for i, (start, value) in enumerate(series):
        bucket_end = series[i + 1][0] if i + 1 < len(series) else start + spacing
        # A bucket [start, bucket_end) holds days up to bucket_end − 1.
        if bucket_end - timedelta(days=1) <= end:
            kept.append((start, value))
    return kept


def window_growth(series: Series, start: date, end: date, config: TrendConfig) -> float | None:
    """Percent growth from the window's first ``edge_days`` to its last; None if undefined."""
    series = complete_buckets(series, end)
    edge = timedelta(days=config.edge_days)
    first = [v for day, v in series if day < start + edge]
    last = [v for day, v in series if day > end - edge]
    if not first or not last:
        return None
    base = fmean(first)
    if base < config.min_base_interest:
        return None
    return round(100.0 * (fmean(last) / base - 1.0), 1)


# --------------------------------------------------------------------------- cache


class TrendCache:
    """Fetched windows in one SQLite file (WAL), safe to share between processes.

    A row is written as soon as its window is fetched, so a crash loses at most the
    window in flight. Empty series ("Google has no data") are cached too.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # autocommit (isolation_level=None): every put is durable on its own.
        self._db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=60000")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS interest ("
            " topic TEXT NOT NULL, geo TEXT NOT NULL, category INTEGER NOT NULL,"
            " start TEXT NOT NULL, end TEXT NOT NULL, points TEXT NOT NULL,"
            " fetched_at TEXT NOT NULL, PRIMARY KEY (topic, geo, category, start, end))")

    def get(self, topic: str, geo: str, category: int, start: date, end: date) -> Series | None:
        """The cached series, or None when absent; raises ValueError for a malformed row."""
        row = self._db.execute(
            "SELECT points FROM interest WHERE topic=? AND geo=? AND category=? AND start=?"
            " AND end=?", (topic, geo, category, start.isoformat(), end.isoformat())).fetchone()
        if row is None:
            return None
        try:
            return [(day, value) for day, value in _SERIES.validate_json(row[0])]
        except ValidationError as exc:
            raise ValueError(f"malformed cached row: {exc.errors()[0]['msg']}") from None

    def put(self, topic: str, geo: str, category: int, start: date, end: date,
            series: Series) -> None:
        points = json.dumps([[day.isoformat(), value] for day, value in series])
        self._db.execute(
            "INSERT OR REPLACE INTO interest VALUES (?, ?, ?, ?, ?, ?, ?)",
            (topic, geo, category, start.isoformat(), end.isoformat(), points,
             datetime.now(timezone.utc).isoformat(timespec="seconds")))

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM interest").fetchone()[0]

    def close(self) -> None:
        self._db.close()


# --------------------------------------------------------------------------- pytrends


class _TrendReqAt(TrendReq):
    """pytrends' ``TrendReq`` pointed at ``base_url``, calling ``before_request`` first.

    pytrends builds its URLs from module and class constants (``TrendReq.GENERAL_URL``),
    so they are rewritten here, at the one method every request goes through.
    """

    def __init__(self, base_url: str, before_request: Callable[[], None], **kwargs) -> None:
        self._base_url = base_url.rstrip("/")
        self._before_request = before_request
        super().__init__(**kwargs)

    def GetGoogleCookie(self) -> dict:  # noqa: N802 (pytrends' name)
        # pytrends' version hard-codes Google's URL and loops forever on proxy errors.
        self._before_request()
        response = requests.get(f"{self._base_url}/explore/?geo={self.hl[-2:]}",
                                timeout=self.timeout, **self.requests_args)
        return {k: v for k, v in response.cookies.items() if k == "NID"}

    def _get_data(self, url, method=TrendReq.GET_METHOD, trim_chars=0, **kwargs):
        self._before_request()
        url = url.replace(pytrends_request.BASE_TRENDS_URL, self._base_url, 1)
        return super()._get_data(url, method=method, trim_chars=trim_chars, **kwargs)


class _TransientTrendError(Exception):
    """A failed request worth retrying (HTTP 429/5xx, connection error, timeout)."""

    def __init__(self, reason: str, retry_after_s: float | None = None):
        super().__init__(reason)
        self.reason, self.retry_after_s = reason, retry_after_s


class TrendClient:
    """Interest series and growth numbers for topics, cached, paced and retried.

    ``sleep`` and ``rng`` are injectable so back-off schedules can be checked without
    waiting; ``before_request`` replaces the in-process pacer and ``on_backoff`` is told
    every back-off delay (Ray shards pass the shared pacer actor's ``reserve`` and
    ``hold``, so a 429 seen by one worker pauses them all).
    """

    def __init__(self, config: TrendConfig, *, sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None,
                 before_request: Callable[[], None] | None = None,
                 on_backoff: Callable[[float], None] | None = None) -> None:
        self.config = config
        self.cache = TrendCache(config.cache_path)
        self.stats = TrendStats()
        self._sleep = sleep
        self._rng = rng or random.Random()
        pacer = RequestPacer(config.min_interval_s)
        self._pace = before_request or (lambda: self._wait(pacer.reserve()))
        self._on_backoff = on_backoff or (lambda seconds: None)
        self._pytrends: _TrendReqAt | None = None

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self._sleep(seconds)

    def _before_request(self) -> None:
        self._pace()
        self.stats.http_requests += 1

    def _session(self) -> _TrendReqAt:
        # Made on first need: a run answered wholly from the cache sends nothing.
        if self._pytrends is None:
            self._pytrends = _TrendReqAt(
                self.config.base_url, self._before_request, hl=self.config.hl,
                tz=self.config.tz, geo=self.config.geo,
                timeout=(self.config.connect_timeout_s, self.config.read_timeout_s))
        return self._pytrends

    def backoff_delay(self, retry: int, retry_after_s: float | None = None) -> float:
        """Delay before retry number ``retry`` (0-based): capped doubling, with jitter."""
        delay = min(self.config.backoff_max_s, self.config.backoff_base_s * 2 ** retry)
        delay *= 1.0 - self.config.backoff_jitter * self._rng.random()
        return max(delay, retry_after_s or 0.0)

    def _fetch_once(self, topic: str, timeframe: str, attempt: int, start: date,
                    end: date) -> Series:
        """One request; :class:`_TransientTrendError` when a retry may succeed."""
        try:
            session = self._session()
            session.build_payload([topic], cat=self.config.category, timeframe=timeframe,
                                  geo=self.config.geo)
            frame = session.interest_over_time()
            if frame.empty:
                return []
            return [(stamp.date(), int(value)) for stamp, value in frame[topic].items()]
        except pytrends_errors.ResponseError as exc:
            status = exc.response.status_code
            if status not in RETRYABLE_STATUS:
                raise TrendFetchError(topic, start, end, attempt, f"HTTP {status}") from exc
            raise _TransientTrendError(f"HTTP {status}", retry_after_seconds(
                exc.response.headers.get("Retry-After"))) from exc
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise _TransientTrendError(f"{type(exc).__name__}: {exc}") from exc
        except (KeyError, ValueError, TypeError) as exc:
            # A 200 whose body is not the format pytrends parses: retrying won't help.
            raise TrendFetchError(topic, start, end, attempt,
                                  f"unexpected response ({type(exc).__name__}: {exc})") from exc

    def _fetch(self, topic: str, start: date, end: date) -> Series:
        """:meth:`_fetch_once`, retried by tenacity on HTTP 429/5xx and connection
        errors with this client's back-off (:meth:`backoff_delay`, ``Retry-After``)."""
        timeframe = f"{start.isoformat()} {end.isoformat()}"

        def delay(state: RetryCallState) -> float:
            return self.backoff_delay(state.attempt_number - 1,
                                      state.outcome.exception().retry_after_s)

        def before_sleep(state: RetryCallState) -> None:
            log.warning("trends %r %s: %s; retry %d/%d in %.1f s", topic, timeframe,
                        state.outcome.exception().reason, state.attempt_number,
                        self.config.max_retries, state.next_action.sleep)
            self.stats.retries += 1
            self._on_backoff(state.next_action.sleep)

        retrying = Retrying(retry=retry_if_exception_type(_TransientTrendError),
                            stop=stop_after_attempt(self.config.max_retries + 1), wait=delay,
                            sleep=self._sleep, before_sleep=before_sleep, reraise=True)
        try:
            for attempt in retrying:
                with attempt:
                    return self._fetch_once(topic, timeframe, attempt.retry_state.attempt_number,
                                            start, end)
        except _TransientTrendError as exc:
            raise TrendFetchError(topic, start, end, self.config.max_retries + 1,
                                  exc.reason) from exc
        raise AssertionError("the last attempt returns or raises")

    def interest(self, topic: str, start: date, end: date) -> Series:
        """Interest in ``topic`` over ``[start, end]``: from the cache, else from Google."""
        key = (topic, self.config.geo, self.config.category, start, end)
        try:
            cached = self.cache.get(*key)
        except ValueError as exc:
            self.stats.malformed_cache_rows += 1
            log.warning("trends cache %s: %r %s..%s: %s; fetching again",
                        self.cache.path, topic, start, end, exc)
            cached = None
        if cached is not None:
            self.stats.cache_hits += 1
            return cached
        series = self._fetch(topic, start, end)
        self.cache.put(*key, series)
        self.stats.windows_fetched += 1
        return series

    def growth(self, topic: str, as_of: date) -> TopicGrowth:
        """Growth over the 3, 5 and 10 years ending ``as_of`` (a horizon may be None).

        Raises :class:`TrendFetchError` when a window cannot be fetched.
        """
        numbers = {}
        for years in HORIZONS_YEARS:
            start = window_start(as_of, years)
            numbers[f"{years}_years"] = window_growth(
                self.interest(topic, start, as_of), start, as_of, self.config)
        return TopicGrowth.model_validate(numbers)

    def close(self) -> None:
        self.cache.close()


# --------------------------------------------------------------------------- articles


@dataclass
class GrowthReport:
    """Outcome of adding growth to articles: counts plus one line per problem."""

    topics_measured: int = 0
    """(topic, date) pairs that got numbers for at least one horizon."""
    topics_without_data: int = 0
    """Pairs Google had no (usable) data for: no growth entry, the trend vote abstains."""
    topics_failed: int = 0
    """Pairs whose fetch failed after retries: no entry; a re-run fetches them again."""
    articles_without_date: int = 0
    stats: TrendStats = field(default_factory=TrendStats)
    problems: list[str] = field(default_factory=list)
    shard_spans: list[tuple[float, float]] = field(default_factory=list)
    """Ray runs: (started, finished) epoch seconds of each shard task, to audit the cap."""

    def note(self, problem: str) -> None:
        log.warning(problem)
        self.problems.append(problem)


TopicDay = tuple[str, date]


def topics_to_measure(articles: Sequence[Article], report: GrowthReport) -> list[TopicDay]:
    """Distinct (topic, day) pairs still lacking growth numbers, in first-seen order.

    Topics that already carry numbers (the original dataset's) are kept as they are.
    """
    wanted: dict[TopicDay, None] = {}
    for article in articles:
        day = article.published_day()
        if day is None:
            if article.topics:
                report.articles_without_date += 1
                report.note(f"article {article.id!r}: no date_published, growth not measured")
            continue
        for topic in article.topics:
            if topic.strip() and topic not in article.growth:
                wanted[(topic, day)] = None
    return list(wanted)


def measure_topics(client: TrendClient, pairs: Iterable[TopicDay], *, progress: bool = True
                   ) -> list[tuple[TopicDay, TopicGrowth | None, str | None]]:
    """Growth per (topic, day): (pair, growth or None, error or None). Never raises for
    a topic's fetch failure; anything else (a crash) propagates, the cache keeps what
    was fetched."""
    results = []
    pairs = list(pairs)
    for topic, day in tqdm(pairs, desc="trends", unit="topic", disable=not progress):
        try:
            results.append(((topic, day), client.growth(topic, day), None))
        except TrendFetchError as exc:
            results.append(((topic, day), None, str(exc)))
    return results


def _apply(articles: Sequence[Article], results, report: GrowthReport) -> list[Article]:
    by_pair: dict[TopicDay, TopicGrowth] = {}
    for (topic, day), growth, error in results:
        if error is not None:
            report.topics_failed += 1
            report.note(error)
        elif growth is None or all(v is None for v in growth.model_dump().values()):
            report.topics_without_data += 1
            report.note(f"trends {topic!r} as of {day}: no usable data, topic skipped")
        else:
            report.topics_measured += 1
            by_pair[(topic, day)] = growth
    updated = []
    for article in articles:
        day = article.published_day()
        found = {t: by_pair[(t, day)] for t in article.topics
                 if t not in article.growth and (t, day) in by_pair}
        if found:
            article = article.model_copy(update={"growth": {**article.growth, **found}})
        updated.append(article)
    return updated


def add_growth(articles: Sequence[Article], client: TrendClient, *, progress: bool = True
               ) -> tuple[list[Article], GrowthReport]:
    """Articles with ``growth`` filled for their topics, in one process."""
    report = GrowthReport()
    pairs = topics_to_measure(articles, report)
    results = measure_topics(client, pairs, progress=progress)
    report.stats.add(client.stats)
    return _apply(articles, results, report), report


# --------------------------------------------------------------------------- Ray shards


def _measure_shard(config_json: str, pairs: list[TopicDay], pacer) -> dict:
    """One Ray task: a client on the shared cache, pacing through the shared actor."""
    import ray

    started = time.time()
    client = TrendClient(TrendConfig.model_validate_json(config_json),
                         before_request=lambda: _sleep_positive(ray.get(pacer.reserve.remote())),
                         on_backoff=lambda seconds: ray.get(pacer.hold.remote(seconds)))
    try:
        results = measure_topics(client, pairs, progress=False)
    finally:
        client.close()
    return {"results": results, "stats": client.stats, "started": started,
            "finished": time.time()}


def _sleep_positive(seconds: float) -> None:
    if seconds > 0:
        time.sleep(seconds)


def add_growth_with_ray(articles: Sequence[Article], config: TrendConfig, *, shards: int,
                        progress: bool = True) -> tuple[list[Article], GrowthReport]:
    """Like :func:`add_growth`, with the topics split into ``shards`` Ray tasks.

    Needs ``ray.init()`` done by the caller (a local Ray or a cluster whose nodes share
    ``cache_path``). At most ``config.max_concurrent_shards`` tasks run at once, and all
    share one :class:`RequestPacer` actor.
    """
    import ray

    if shards < 1:
        raise ValueError(f"shards={shards}: need at least one Ray task")
    report = GrowthReport()
    pairs = topics_to_measure(articles, report)
    chunks = [pairs[i::shards] for i in range(shards) if pairs[i::shards]]
    pacer = ray.remote(RequestPacer).options(num_cpus=0).remote(config.min_interval_s)
    task = ray.remote(_measure_shard).options(num_cpus=config.cpus_per_shard)
    config_json = config.model_dump_json()
    pending, results = [], []
    queue = list(chunks)
    try:
        with tqdm(total=len(pairs), desc="trends (ray)", unit="topic",
                  disable=not progress) as bar:
            while queue or pending:
                while queue and len(pending) < config.max_concurrent_shards:
                    pending.append(task.remote(config_json, queue.pop(0), pacer))
                done, pending = ray.wait(pending, num_returns=1)
                shard = ray.get(done[0])
                results.extend(shard["results"])
                report.stats.add(shard["stats"])
                report.shard_spans.append((shard["started"], shard["finished"]))
                bar.update(len(shard["results"]))
    finally:
        ray.kill(pacer)
    return _apply(articles, results, report), report


# --------------------------------------------------------------------------- the stage


def run_stage(articles: list[Article], settings: dict):
    """The trends stage of the build, run by :mod:`pipeline.stage_runner` (``trends:``
    section = a TrendConfig)."""
    config = TrendConfig.model_validate(settings)
    if config.ray_shards:
        import ray

        if not ray.is_initialized():
            ray.init()
        articles, report = add_growth_with_ray(articles, config, shards=config.ray_shards)
    else:
        client = TrendClient(config)
        try:
            articles, report = add_growth(articles, client)
        finally:
            client.close()
    counts = {"topics_measured": report.topics_measured,
              "topics_without_data": report.topics_without_data,
              "topics_failed": report.topics_failed,
              "articles_without_date": report.articles_without_date,
              **{f"trends_{k}": v for k, v in vars(report.stats).items()}}
    return StageOutput(articles=articles, counts=counts,
                       description="growth = % change of mean interest, first vs last "
                       f"{config.edge_days} days of each 3/5/10-year window ending on the "
                       "article's day")
