"""The link stage: follow an item's link politely and replace a teaser with the article.

A newsletter item is usually a headline, two lines of teaser and a link. For an item
whose text is short or reads as a teaser (:class:`~pipeline.link_settings.LinkSettings`
says which), the
:class:`LinkEnricher` fetches the link and extracts the page's main text, title,
publication date and language, keeping the item's own text whenever that fails. Every
item comes back as an :class:`EnrichedArticle`: the (possibly updated) article plus a
:class:`LinkProvenance` saying where its text came from and what the fetch did.

Libraries do the work they were made for:

* ``httpx`` sends the requests (timeouts, streaming so a size cap holds before a body
  is read); redirects are followed here, hop by hop, so robots.txt, the per-host limits
  and the redirect cap apply to every hop.
* ``hishel`` 2.0 is the HTTP cache (RFC 9111, SQLite): a page with validators is
  revalidated (``If-None-Match``/``If-Modified-Since`` → 304, no body) rather than
  downloaded again, a fresh one is served without a request. Its async SQLite storage
  needs the ``anysqlite`` package, which this environment does not have, so the sync
  ``SqliteStorage`` (thread-safe) and sync transport are used and each request runs in
  a worker thread; the event loop only schedules.
* ``protego`` parses robots.txt (RFC 9309, with ``Crawl-delay``); ``tenacity`` retries
  429 and 5xx answers with exponential back-off and honours ``Retry-After``;
  ``trafilatura`` extracts the article (``htmldate`` finds its date); ``courlan``
  normalises URLs (tracking parameters, fragments, case) so one article reached through
  two links is fetched once and recognised as one item.

Within one :meth:`LinkEnricher.enrich` call (and across calls on the same enricher),
every URL is requested at most once: fetches are shared by normalised URL, and so are
extractions by final URL. Across runs the HTTP cache prevents downloading a page again.

How callers use it:

* a batch job (``pipeline/build.py``): ``enrich_articles(articles, settings,
  deadline_s)`` after reading the sources and before deduplication (so dedupe sees
  the article text, and ``drop_link_duplicates`` or ``provenance.canonical_url``
  merges one article reached through two newsletters);
* a service (ingestion): one ``LinkEnricher`` opened at start-up and closed at
  shut-down, ``await enricher.enrich(new_items, deadline_s=...)`` per batch before
  classification; ``provenance`` is stored beside each item and
  ``enricher.counters`` exported (e.g. as Prometheus counters per host and status).

Outcomes (``LinkProvenance.fetch_status``), each keeping the item's own text unless
it is ``ok``:

=====================  =================================================================
``ok``                 page fetched (or served/revalidated from the cache) and extracted
``not_needed``         the item's text is long enough; no request made
``no_link``            the item has no http(s) link
``invalid_url``        the link is not a URL that can be fetched
``robots_disallowed``  the site's robots.txt disallows the path for our user agent
``http_error``         a 4xx/5xx answer (after retries for 5xx); ``http_status`` says which
``rate_limited``       429 after the retries, or a ``Retry-After`` longer than allowed
``timeout``            no complete answer within the connect/read/page time limits
``too_large``          ``Content-Length`` or the bytes read exceeded ``max_page_bytes``
``unsupported_type``   not HTML (a PDF, an image): not downloaded, not extracted
``too_many_redirects`` more than ``max_redirects`` hops
``blocked_address``    the link, a redirect hop or its robots.txt would connect to a
                       loopback, private, link-local or other non-global address
                       (:mod:`pipeline.egress`; ``allow_networks`` admits some)
``connection_error``   connection refused/reset, DNS failure (after retries)
``extraction_failed``  HTML fetched but no article text of ``min_page_chars`` found
``deadline``           the caller's deadline passed first
``error``              an unexpected error in the stage (logged with its traceback)
=====================  =================================================================
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any, AsyncIterator, Callable, Literal, Sequence
from urllib.parse import urldefrag, urljoin, urlsplit

import courlan
import hishel
import httpx
import tenacity
import trafilatura
from hishel.httpx import CacheTransport
from protego import Protego
from trafilatura.settings import set_date_params
from pydantic import BaseModel, Field

from pipeline.article import Article
from pipeline.dedupe import normalise_text
from pipeline.egress import AddressPolicy, BlockedAddress, policy_transport
from pipeline.fetch_limits import BodyCut, read_bounded
from pipeline.link_settings import LinkSettings
from pipeline.politeness import RequestPacer, retry_after_seconds

log = logging.getLogger(__name__)

TextOrigin = Literal["teaser", "page", "both"]
FetchStatus = Literal[
    "ok", "not_needed", "no_link", "invalid_url", "robots_disallowed", "http_error",
    "rate_limited", "timeout", "too_large", "unsupported_type", "too_many_redirects",
    "blocked_address", "connection_error", "extraction_failed", "deadline", "error",
]
EXTRACTOR = f"trafilatura {trafilatura.__version__}"
HTML_TYPES = ("text/html", "application/xhtml+xml")
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
PASSING_FAILURES = frozenset({"timeout", "connection_error", "rate_limited"})
"""Outcomes that may differ on the next try (with 5xx answers): not remembered."""
MEMO_LIMIT = 10_000
"""Most links (and extractions, and robots.txt files) an enricher remembers."""
ROBOTS_BYTES = 512_000
"""Most of a robots.txt read (RFC 9309 asks parsers to take at least 500 KiB)."""
ERROR_BODY_BYTES = 65_536
"""Most bytes read of a redirect's or an error's body."""


# --------------------------------------------------------------------------- results


class LinkProvenance(BaseModel):
    """Where an item's text came from and what following its link did."""

    text_origin: TextOrigin = Field(
        description="``teaser``: the item's own text only; ``page``: the extracted article "
        "(it contains the teaser); ``both``: teaser followed by the article.")
    fetch_status: FetchStatus = Field(description="Outcome; see the module docstring.")
    detail: str = Field(default="", description="Human-readable reason for the outcome.")
    requested_url: str | None = Field(default=None, description="The item's link as given.")
    final_url: str | None = Field(default=None,
                                  description="Where the redirects ended.")
    canonical_url: str | None = Field(
        default=None,
        description="Normalised identity of the article (the page's rel=canonical when it "
        "has one, else the final URL, else the link): equal for the same article.")
    redirects: int = Field(default=0, description="Redirect hops followed.")
    http_status: int | None = Field(default=None, description="Last HTTP status seen.")
    from_cache: bool = Field(default=False,
                             description="The page body came from the HTTP cache.")
    revalidated: bool = Field(
        default=False, description="The cache asked the site (validators) and got a 304.")
    extractor: str | None = Field(default=None,
                                  description="Library and version that extracted text.")
    page_title: str | None = Field(default=None, description="Title found on the page.")
    page_date: date | None = Field(default=None,
                                   description="Publication date found on the page.")
    language: str | None = Field(default=None,
                                 description="The page's declared language (html lang).")
    page_chars: int = Field(default=0, description="Characters of extracted article text.")
    duplicate_of: str | int | None = Field(
        default=None, description="Id of an earlier item in the same call with the same "
        "canonical URL: the same article reached by another link.")


class EnrichedArticle(BaseModel):
    """An item after the link stage: text replaced or extended when a page was read."""

    article: Article
    provenance: LinkProvenance


class LinkCounters:
    """Outcome counts per host, for the caller to export (e.g. as Prometheus counters).

    ``outcomes[(host, status)]`` counts link resolutions (one per distinct link, however
    many items share it); ``requests[(host, kind)]`` counts HTTP requests by what the
    cache did: ``network`` (body downloaded), ``revalidated`` (304), ``cache_hit`` (no
    request left the machine), ``robots`` (robots.txt fetches).
    """

    def __init__(self) -> None:
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self.requests: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()  # requests are counted from worker threads

    def count_outcome(self, host: str, status: str) -> None:
        with self._lock:
            self.outcomes[(host, status)] += 1

    def count_request(self, host: str, kind: str) -> None:
        with self._lock:
            self.requests[(host, kind)] += 1

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        return {
            "outcomes": [{"host": h, "status": s, "count": n}
                         for (h, s), n in sorted(self.outcomes.items())],
            "requests": [{"host": h, "kind": k, "count": n}
                         for (h, k), n in sorted(self.requests.items())],
        }


# --------------------------------------------------------------------------- URLs


def canonical_url(url: str) -> str | None:
    """The normalised form used to recognise one page behind several links: lower-case
    scheme and host, default port, fragment and tracking parameters (``utm_*``,
    ``fbclid``, ``ref``, session ids: courlan's list) removed, query sorted. None when
    ``url`` is not a fetchable http(s) URL."""
    url = url.strip()
    if not url.lower().startswith(("http://", "https://")):
        return None
    try:
        # Not strict: courlan's strict mode keeps only an allow-list of query parameters
        # and would turn "article.php?story=123" into another page.
        normalised = courlan.normalize_url(url, strict=False)
    except ValueError:
        return None
    # A fragment never reaches the server: it names a place in the same page.
    return urldefrag(normalised).url


def host_of(url: str) -> str:
    """``host[:port]``, the unit the politeness limits and counters apply to; never the
    URL's credentials (``user:password@``), which would end up in metric labels."""
    return urlsplit(url).netloc.rpartition("@")[2].lower()


# --------------------------------------------------------------------------- fetching


class _StopFetch(Exception):
    """A request ended in an outcome that is not retried."""

    def __init__(self, status: FetchStatus, detail: str, http_status: int | None = None):
        super().__init__(detail)
        self.status, self.detail, self.http_status = status, detail, http_status


class _Retryable(Exception):
    """A 429/5xx or connection error: tried again after a back-off."""

    def __init__(self, status: FetchStatus, detail: str, http_status: int | None = None,
                 retry_after_s: float | None = None):
        super().__init__(detail)
        self.status, self.detail, self.http_status = status, detail, http_status
        self.retry_after_s = retry_after_s


@dataclass
class _Answer:
    """One HTTP request's usable result: a redirect or an HTML body."""

    url: str
    http_status: int
    location: str | None = None
    body: bytes = b""
    charset: str | None = None
    content_language: str | None = None
    from_cache: bool = False
    revalidated: bool = False


@dataclass
class _Page:
    """What resolving one link produced."""

    status: FetchStatus
    detail: str
    final_url: str | None = None
    redirects: int = 0
    http_status: int | None = None
    answer: _Answer | None = None


@dataclass
class _Extraction:
    text: str
    title: str | None
    page_date: date | None
    language: str | None
    canonical: str | None


def _drain(response: httpx.Response, limit: int, deadline: float) -> None:
    """Read a short redirect or error body to its end, unless it exceeds ``limit`` bytes
    or runs past ``deadline``: the cache stores an answer only once its body is complete."""
    try:
        read_bounded(response, limit, deadline)
    except BodyCut:
        pass


class _HostGate:
    """Per-host concurrency cap, and request starts spaced by the host's pacer."""

    def __init__(self, concurrency: int, interval_s: float) -> None:
        self.slots = asyncio.Semaphore(concurrency)
        self.pacer = RequestPacer(interval_s)
        # one waiter reserves at a time, and only after the one before it has slept:
        # a Retry-After that arrives meanwhile moves every later start
        self._lock = asyncio.Lock()

    def hold_off(self, seconds: float) -> None:
        """No request to this host before ``seconds`` from now (a 429's Retry-After)."""
        self.pacer.hold(seconds)

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        async with self.slots:
            async with self._lock:
                wait = self.pacer.reserve()
                if wait > 0:
                    await asyncio.sleep(wait)
            yield


class LinkEnricher:
    """Follows items' links and extracts their articles; use as ``async with``.

    ``enrich(articles, deadline_s)`` returns one :class:`EnrichedArticle` per article,
    in order, never raising for a bad link; ``counters`` accumulates outcomes per host.
    One enricher can serve many calls (its cache of fetches and robots.txt files then
    spans them); close it to release the HTTP client and the cache database.
    """

    def __init__(self, settings: LinkSettings | None = None,
                 counters: LinkCounters | None = None) -> None:
        self.settings = settings or LinkSettings()
        self.counters = counters or LinkCounters()
        self.policy = AddressPolicy.allowing(self.settings.allow_networks)
        """Where a fetch may connect: global addresses and ``allow_networks``."""
        self._executor = ThreadPoolExecutor(max_workers=self.settings.max_concurrency,
                                            thread_name_prefix="link-fetch")
        self._client = self._make_client()
        self._gates: dict[str, _HostGate] = {}
        self._robots: dict[str, asyncio.Task[Protego | None]] = {}
        self._pages: dict[str, asyncio.Task[_Page]] = {}
        self._extractions: dict[str, asyncio.Task[_Extraction | None]] = {}

    def _make_client(self) -> httpx.Client:
        s = self.settings
        # every connection (each hop, robots.txt) is checked where it is opened
        transport: httpx.BaseTransport = policy_transport(
            self.policy, limits=httpx.Limits(max_connections=s.max_concurrency))
        if s.cache_path is not None:
            s.cache_path.parent.mkdir(parents=True, exist_ok=True)
            # shared=False: a private cache for this crawler; RFC rules, not "cache all".
            transport = CacheTransport(
                next_transport=transport,
                storage=hishel.SqliteStorage(database_path=s.cache_path),
                rfc=hishel.CacheOptions(shared=False))
        timeout = httpx.Timeout(s.read_timeout_s, connect=s.connect_timeout_s)
        return httpx.Client(transport=transport, timeout=timeout, follow_redirects=False,
                            headers={"User-Agent": s.user_agent,
                                     "Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.5"})

    async def __aenter__(self) -> LinkEnricher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for task in [*self._pages.values(), *self._robots.values(), *self._extractions.values()]:
            task.cancel()
        # Worker threads end within their timeouts; wait for them before closing the client.
        await asyncio.get_running_loop().run_in_executor(None, self._shutdown)

    def _shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    # ---------------------------------------------------------------- public API

    async def enrich(self, articles: Sequence[Article], deadline_s: float | None = None,
                     on_done: Callable[[], None] | None = None) -> list[EnrichedArticle]:
        """Every article with its link followed where the settings want it.

        After ``deadline_s`` seconds the items still waiting keep their own text, with
        ``fetch_status="deadline"``: a slow site never holds up the others.
        ``on_done`` is called as each item finishes (a progress bar).
        """
        tasks = [asyncio.ensure_future(self._enrich_one(a)) for a in articles]
        if on_done is not None:
            for task in tasks:
                task.add_done_callback(lambda _task: on_done())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=deadline_s)
            for task in pending:
                task.cancel()
        results: list[EnrichedArticle] = []
        for article, task in zip(articles, tasks):
            if task.cancelled() or not task.done():
                link = article.link
                results.append(self._kept(article, "deadline",
                                          f"not enriched within the {deadline_s:g} s deadline; "
                                          "classified on the item's own text",
                                          requested_url=link,
                                          canonical_url=canonical_url(link) if link else None))
                if link:
                    self.counters.count_outcome(host_of(link), "deadline")
            elif task.exception() is not None:
                error = task.exception()
                log.error("link stage failed on item %r", article.id, exc_info=error)
                results.append(self._kept(article, "error", f"unexpected {type(error).__name__}: "
                                          f"{error}", requested_url=article.link))
            else:
                results.append(task.result())
        _mark_duplicates(results)
        return results

    # ---------------------------------------------------------------- one item

    def _kept(self, article: Article, status: FetchStatus, detail: str,
              **fields: Any) -> EnrichedArticle:
        return EnrichedArticle(article=article, provenance=LinkProvenance(
            text_origin="teaser", fetch_status=status, detail=detail, **fields))

    async def _enrich_one(self, article: Article) -> EnrichedArticle:
        link = (article.link or "").strip()
        canonical = canonical_url(link) if link else None
        if not self.settings.wants_page(article):
            return self._kept(article, "not_needed", "the item's text is not a teaser",
                              requested_url=link or None, canonical_url=canonical)
        if not link:
            return self._kept(article, "no_link", "the item has no link")
        if canonical is None:
            return self._kept(article, "invalid_url", f"not an http(s) URL: {link!r}",
                              requested_url=link)
        page = await self._shared(self._pages, canonical, lambda: self._resolve(canonical))
        fields: dict[str, Any] = dict(
            requested_url=link, final_url=page.final_url, redirects=page.redirects,
            http_status=page.http_status,
            canonical_url=canonical_url(page.final_url) if page.final_url else canonical)
        if page.status != "ok" or page.answer is None:
            return self._kept(article, page.status, page.detail, **fields)
        answer = page.answer
        fields.update(from_cache=answer.from_cache, revalidated=answer.revalidated,
                      extractor=EXTRACTOR)
        extraction = await self._shared(self._extractions, page.final_url or canonical,
                                         lambda: self._extract(answer))
        if extraction is None or len(extraction.text) < self.settings.min_page_chars:
            found = len(extraction.text) if extraction else 0
            if extraction is not None:
                fields.update(page_title=extraction.title, page_date=extraction.page_date,
                              language=extraction.language)
            return self._kept(article, "extraction_failed",
                              f"{found} characters of article text found (at least "
                              f"{self.settings.min_page_chars} needed)", page_chars=found,
                              **fields)
        if extraction.canonical:
            fields["canonical_url"] = extraction.canonical
        text, origin = _merge_text(article.text, extraction.text)
        update: dict[str, Any] = {"text": text}
        if not article.title.strip() and extraction.title:
            update["title"] = extraction.title
        if article.date_published is None and extraction.page_date is not None:
            update["date_published"] = datetime.combine(extraction.page_date, datetime.min.time(),
                                                        tzinfo=timezone.utc)
        enriched = article.model_copy(update=update)
        return EnrichedArticle(article=enriched, provenance=LinkProvenance(
            text_origin=origin, fetch_status="ok",
            detail=("revalidated: the site answered 304 Not Modified" if answer.revalidated
                    else "served from the HTTP cache" if answer.from_cache else "fetched"),
            page_title=extraction.title, page_date=extraction.page_date,
            language=extraction.language, page_chars=len(extraction.text), **fields))

    async def _shared(self, memo: dict[str, asyncio.Task[Any]], key: str, start: Any) -> Any:
        """Run ``start()`` once per key; later callers await the same task. Shielded, so a
        caller cancelled by its deadline does not cancel the work others wait for.

        A long-lived enricher (the ingestion service's) must neither keep every page in
        memory nor never retry a link that failed for a passing reason: a result that is
        worth retrying is forgotten when it completes, and past ``MEMO_LIMIT`` entries
        the oldest finished ones are dropped (the HTTP cache still saves their download).
        """
        task = memo.get(key)
        if task is None:
            task = memo[key] = asyncio.ensure_future(start())
            task.add_done_callback(lambda done: _forget_if_passing(memo, key, done))
            for old_key in list(memo)[:max(0, len(memo) - MEMO_LIMIT)]:
                if memo[old_key].done():
                    del memo[old_key]
        return await asyncio.shield(task)

    # ---------------------------------------------------------------- one link

    async def _resolve(self, url: str) -> _Page:
        """Follow ``url`` through its redirects to an HTML body, obeying robots.txt."""
        page = await self._resolve_hops(url)
        self.counters.count_outcome(host_of(url), page.status)
        log.info("%s: %s (%s)", url, page.status, page.detail)
        return page

    async def _resolve_hops(self, url: str) -> _Page:
        current, hops = url, 0
        while True:
            try:  # before robots.txt: a refused host gets no request at all
                await self._in_thread(self.policy.check_url, current)
            except BlockedAddress as blocked:
                return _Page("blocked_address", str(blocked), final_url=current,
                             redirects=hops)
            if self.settings.respect_robots and not await self._robots_allow(current):
                return _Page("robots_disallowed", f"robots.txt disallows {current}",
                             final_url=current, redirects=hops)
            try:
                answer = await self._request_with_retries(current)
            except (_StopFetch, _Retryable) as stop:
                return _Page(stop.status, stop.detail, final_url=current, redirects=hops,
                             http_status=stop.http_status)
            if answer.location is None:
                return _Page("ok", "fetched", final_url=current, redirects=hops,
                             http_status=answer.http_status, answer=answer)
            if hops >= self.settings.max_redirects:
                return _Page("too_many_redirects",
                             f"more than {self.settings.max_redirects} redirects",
                             final_url=current, redirects=hops, http_status=answer.http_status)
            hops += 1
            current = answer.location

    def _gate(self, host: str) -> _HostGate:
        if host not in self._gates:
            self._gates[host] = _HostGate(self.settings.per_host_concurrency,
                                          self.settings.per_host_interval_s)
        return self._gates[host]

    async def _request_with_retries(self, url: str) -> _Answer:
        s = self.settings
        gate = self._gate(host_of(url))
        exponential = tenacity.wait_exponential_jitter(
            multiplier=s.backoff_initial_s, max=s.backoff_max_s, jitter=s.backoff_initial_s)

        def wait(state: tenacity.RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            if isinstance(error, _Retryable) and error.retry_after_s is not None:
                return error.retry_after_s
            return exponential(state)

        async for attempt in tenacity.AsyncRetrying(
                stop=tenacity.stop_after_attempt(s.max_attempts), wait=wait,
                retry=tenacity.retry_if_exception_type(_Retryable), reraise=True):
            with attempt:
                async with gate.turn():
                    answer = await self._in_thread(self._request, url)
                if isinstance(answer, _Retryable) and answer.retry_after_s is not None:
                    if answer.retry_after_s > s.max_retry_after_s:
                        raise _StopFetch("rate_limited", f"{answer.detail}; Retry-After "
                                         f"{answer.retry_after_s:g} s is longer than "
                                         f"{s.max_retry_after_s:g} s", answer.http_status)
                    gate.hold_off(answer.retry_after_s)
                if isinstance(answer, Exception):
                    raise answer
        return answer

    async def _in_thread(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    def _request(self, url: str) -> _Answer | _StopFetch | _Retryable:
        """One GET, in a worker thread: returned, not raised, so the retry loop sees it."""
        s = self.settings
        host = host_of(url)
        started = time.monotonic()
        try:
            with self._client.stream("GET", url) as response:
                caching = response.extensions.get("caching") or {}  # hishel's CacheStatus
                from_cache = bool(caching.get("from_cache"))
                # hishel also flags a revalidation the site answered with a full new body.
                revalidated = from_cache and bool(caching.get("revalidated"))
                kind = "revalidated" if revalidated else "cache_hit" if from_cache else "network"
                self.counters.count_request(host, kind)
                status = response.status_code
                if not 200 <= status < 300:
                    # Read a short error or redirect body to its end: the cache stores an
                    # answer only once its body is complete, and a stored 301 is one
                    # request fewer next time.
                    _drain(response, ERROR_BODY_BYTES, started + s.page_timeout_s)
                if response.is_redirect and response.headers.get("location"):
                    return _Answer(url, status, location=urljoin(url, response.headers["location"]))
                if status in RETRY_STATUSES:
                    retry_after = retry_after_seconds(response.headers.get("retry-after"))
                    outcome: FetchStatus = "rate_limited" if status == 429 else "http_error"
                    return _Retryable(outcome, f"HTTP {status} {response.reason_phrase}",
                                      status, retry_after)
                if not 200 <= status < 300:
                    return _StopFetch("http_error", f"HTTP {status} {response.reason_phrase}",
                                      status)
                media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
                if media_type and media_type not in HTML_TYPES:
                    return _StopFetch("unsupported_type",
                                      f"{media_type} is not HTML; not downloaded", status)
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > s.max_page_bytes:
                    return _StopFetch("too_large", f"Content-Length {declared} bytes exceeds "
                                      f"{s.max_page_bytes}", status)
                try:
                    body = read_bounded(response, s.max_page_bytes,
                                        started + s.page_timeout_s)
                except BodyCut as cut:
                    return _StopFetch(cut.kind, f"more than {s.max_page_bytes} bytes read; "
                                      "abandoned" if cut.kind == "too_large" else
                                      f"page not complete after {s.page_timeout_s:g} s",
                                      status)
                return _Answer(url, status, body=body,
                               charset=response.charset_encoding,
                               content_language=response.headers.get("content-language"),
                               from_cache=from_cache, revalidated=revalidated)
        except httpx.TimeoutException as exc:
            return _StopFetch("timeout", f"{type(exc).__name__} after "
                              f"{time.monotonic() - started:.1f} s")
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
            return _Retryable("connection_error", f"{type(exc).__name__}: {exc}")
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            return _StopFetch("invalid_url", f"{type(exc).__name__}: {exc}")
        except httpx.HTTPError as exc:
            return _StopFetch("connection_error", f"{type(exc).__name__}: {exc}")
        except BlockedAddress as exc:  # re-resolved to a refused address at connect
            return _StopFetch("blocked_address", str(exc))

    # ---------------------------------------------------------------- robots.txt

    async def _robots_allow(self, url: str) -> bool:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}".lower()
        # RFC 9309 section 2.4: a robots.txt should not be used for more than 24 hours.
        day = int(time.time() // 86_400)
        robots = await self._shared(self._robots, f"{origin} {day}",
                                    lambda: self._load_robots(origin))
        return True if robots is None else robots.can_fetch(url, self.settings.user_agent)

    async def _load_robots(self, origin: str) -> Protego | None:
        """The origin's robots.txt; None (allow all) when it has none (4xx). An origin
        whose robots.txt is unreachable or errors (5xx) is treated as disallowing
        everything, as RFC 9309 section 2.3.1.4 asks."""
        robots_url = f"{origin}/robots.txt"
        host = host_of(origin)
        async with self._gate(host).turn():
            answer = await self._in_thread(self._robots_request, robots_url)
        self.counters.count_request(host, "robots")
        if isinstance(answer, int):
            if 400 <= answer < 500:
                return None
            return Protego.parse("User-agent: *\nDisallow: /")
        robots = Protego.parse(answer)
        delay = robots.crawl_delay(self.settings.user_agent)
        if delay:
            gate = self._gate(host)
            gate.pacer.min_interval_s = max(gate.pacer.min_interval_s, float(delay))
        return robots

    def _robots_request(self, url: str) -> str | int:
        """robots.txt text, or the status that stood for it (599: unreachable, or not
        complete within ``page_timeout_s``, as a page would not be)."""
        deadline = time.monotonic() + self.settings.page_timeout_s
        try:
            with self._client.stream("GET", url, follow_redirects=True) as response:
                if response.status_code != 200:
                    _drain(response, ERROR_BODY_BYTES, deadline)  # complete: cacheable
                    return response.status_code
                # RFC 9309: at least 500 KiB must be parsed; a longer file is cut there.
                try:
                    body = read_bounded(response, ROBOTS_BYTES, deadline, truncate=True)
                except BodyCut:  # only a timeout: a long file is truncated
                    return 599
                return body.decode("utf-8", errors="replace")
        except (httpx.HTTPError, BlockedAddress):
            return 599

    # ---------------------------------------------------------------- extraction

    async def _extract(self, answer: _Answer) -> _Extraction | None:
        return await self._in_thread(extract_article, answer.body, answer.url, answer.charset,
                                     answer.content_language,
                                     self.settings.extensive_date_search)


def extract_article(body: bytes, url: str, charset: str | None = None,
                    content_language: str | None = None,
                    extensive_date_search: bool = False) -> _Extraction | None:
    """The main text, title, date, language and canonical URL of an HTML page.

    ``charset`` (from the Content-Type header) decodes the body when given; otherwise
    trafilatura detects it (``<meta charset>``, then a guess). Navigation, comments and
    boilerplate are left out. None when nothing could be parsed.
    """
    html: str | bytes = body
    if charset:
        try:
            html = body.decode(charset, errors="replace")
        except LookupError:  # an unknown charset name: let trafilatura detect it
            html = body
    tree = trafilatura.load_html(html)
    if tree is None:
        return None
    language = (tree.get("lang") or content_language or "").split(",")[0].strip() or None
    date_params = set_date_params(extensive_date_search)
    document = trafilatura.bare_extraction(tree, url=url, with_metadata=True,
                                           include_comments=False, include_tables=False,
                                           date_extraction_params=date_params)
    if document is None:
        return _Extraction("", None, None, language, None)
    text = (document.text or "").strip()
    title = (document.title or "").strip() or None
    if title and text.startswith(title):  # trafilatura repeats the headline as line one
        text = text[len(title):].lstrip()
    page_date = None
    if document.date:
        try:
            page_date = date.fromisoformat(document.date[:10])
        except ValueError:
            page_date = None
    declared = document.url if document.url and document.url != url else None
    return _Extraction(text, title, page_date, language,
                       canonical_url(declared) if declared else None)


def _forget_if_passing(memo: dict[str, asyncio.Task[Any]], key: str,
                       task: asyncio.Task[Any]) -> None:
    if task.cancelled() or task.exception() is not None:
        passing = True
    else:
        result = task.result()
        passing = isinstance(result, _Page) and (
            result.status in PASSING_FAILURES
            or (result.status == "http_error" and (result.http_status or 0) >= 500))
    if passing and memo.get(key) is task:
        del memo[key]


def _merge_text(teaser: str, page: str) -> tuple[str, TextOrigin]:
    """The page's text when it already contains the teaser, else teaser then page."""
    teaser = teaser.strip()
    if not teaser:
        return page, "page"
    # Newsletters rephrase or trim a teaser; its first words are the stable part.
    head = " ".join(normalise_text(teaser).split()[:12])
    if head and head in normalise_text(page):
        return page, "page"
    return f"{teaser}\n\n{page}", "both"


def _mark_duplicates(results: list[EnrichedArticle]) -> None:
    first_with: dict[str, str | int] = {}
    for result in results:
        key = result.provenance.canonical_url
        if key is None or result.provenance.fetch_status in ("no_link", "invalid_url"):
            continue
        if key in first_with:
            result.provenance.duplicate_of = first_with[key]
        else:
            first_with[key] = result.article.id


def drop_link_duplicates(results: Sequence[EnrichedArticle]) -> list[EnrichedArticle]:
    """The results without items that are the same article as an earlier one."""
    return [r for r in results if r.provenance.duplicate_of is None]


def enrich_articles(articles: Sequence[Article], settings: LinkSettings | None = None,
                    deadline_s: float | None = None,
                    counters: LinkCounters | None = None,
                    on_done: Callable[[], None] | None = None) -> list[EnrichedArticle]:
    """Synchronous :meth:`LinkEnricher.enrich` for batch code (one enricher per call).

    Raises RuntimeError inside a running event loop: use ``LinkEnricher`` there.
    """
    async def run() -> list[EnrichedArticle]:
        async with LinkEnricher(settings, counters) as enricher:
            return await enricher.enrich(articles, deadline_s, on_done)

    return asyncio.run(run())


def url_id(url: str) -> str:
    """A stable item id for a link: a short hash of its canonical form."""
    return "link-" + hashlib.sha256((canonical_url(url) or url).encode()).hexdigest()[:16]
