"""Link stage speed: pages extracted per second, and what the stage adds per item.

Real Reuters-21578 stories are served as news pages (navigation, share links, related
stories and comments around the article) by local HTTP servers on loopback, one server
per simulated site, and newsletter-style teaser items (headline + first sentence) point
at them. Measured in one run, side by side:

1. **Extraction alone**: :func:`pipeline.links.extract_article` (trafilatura + htmldate)
   over the page bytes in this process: pages per second.
2. **Link stage, cold**: :meth:`LinkEnricher.enrich` over the items with an empty HTTP
   cache: robots.txt, fetch, cache store, extraction (ms per item).
3. **Link stage, warm**: the same items again with a new enricher on the same cache:
   every page is revalidated (``If-None-Match`` → 304) and extracted again.
4. **Not needed**: the same items with full text (the rule fetches nothing): the
   stage's own overhead on an item it leaves alone.
5. **No HTTP cache**: the cold run again with caching off, to show what storing the
   pages in the cache costs.

6. **Through the ingestion service**: the teaser items pushed to a running ingestion
   service (``POST /v1/items`` over loopback HTTP, in batches) with the link stage off
   and then on (empty cache), side by side: the cost the stage adds per ingested item,
   intake included (dedupe, SQLite, provenance row). The classification API is left
   unreachable in both runs: classification costs the same with or without the stage
   (apart from longer texts, which the model truncates at its prompt limit).

Politeness is turned down for the measurement (``per_host_interval_s=0``; 4 requests
per host at a time): the figures are what this machine can do. With the default one
request per second per host, a newsletter of N stories from H sites takes about N/H
seconds of waiting, which dwarfs every figure here; the deadline bounds it.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_links.py --pages 400 --sites 4
    (add ``--ingest-batch N`` to change the push size of part 6)

Extraction is also timed a second time with htmldate's extensive date search on
(``--extensive-sample`` pages), the setting :class:`LinkSettings` leaves off.

Writes ``bench/results/links.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingestion.api import create_ingest_app  # noqa: E402
from ingestion.config import IngestConfig  # noqa: E402
from pipeline.article import Article  # noqa: E402
from serve.local_http import free_port, serve_app  # noqa: E402
from pipeline.link_settings import LinkSettings  # noqa: E402
from pipeline.links import LinkEnricher, extract_article  # noqa: E402
from pipeline.reuters import read_collection  # noqa: E402
from pipeline.settings import Paths  # noqa: E402


MENU = "".join(f'<li class="menu-item"><a href="/section/{i}">Section {i}</a></li>'
               for i in range(150))
STYLE = "".join(f".c{i}{{margin:{i % 7}px;color:#{i:06x}}}" for i in range(400))
SCRIPT = "var config = {" + ",".join(f'"k{i}": "{"v" * 30}"' for i in range(400)) + "};"
CARDS = "".join(f'<div class="card"><a href="/related/{i}"><img src="/img/{i}.jpg" alt="">'
                f"<h4>Related headline number {i} about markets and companies</h4></a>"
                f"<p>A short teaser for related story {i}, to tempt a click.</p></div>"
                for i in range(12))


def news_page(title: str, text: str, published: str) -> bytes:
    """A Reuters story dressed as a news site's page: a large menu, inline style and
    script, related-story cards and comments around the article (about 60 KiB, the
    order of a real news page's HTML without its external assets)."""
    paragraphs = "".join(f"<p>{html.escape(p)}</p>" for p in text.split("\n") if p.strip())
    related = CARDS
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)} | Bench News</title>
<meta property="article:published_time" content="{published}">
<style>{STYLE}</style><script>{SCRIPT}</script></head><body>
<header><nav><ul>{MENU}</ul></nav></header>
<main><article><h1>{html.escape(title)}</h1><p class="byline">By Bench Reporter</p>
{paragraphs}</article><aside><h3>Related</h3>{related}</aside>
<section class="comments"><h3>Comments</h3><p>First! Great read.</p>
<p>I disagree with the analysts quoted here.</p></section></main>
<footer><p>Copyright Bench News. Privacy. Terms. Cookies.</p></footer></body></html>""".encode()


@contextmanager
def serve_pages(pages: dict[str, bytes]) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?")[0]
            if path == "/robots.txt":
                body, status, etag = b"User-agent: *\nDisallow: /private/\n", 200, None
            elif path in pages:
                body, status, etag = pages[path], 200, f'"{hash(path)}"'
            else:
                body, status, etag = b"not found", 404, None
            if etag and self.headers.get("If-None-Match") == etag:
                self.send_response(304)
                self.send_header("ETag", etag)
                self.end_headers()
                return
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            if etag:
                self.send_header("ETag", etag)
                self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def timed_enrich(articles: list[Article], settings: LinkSettings) -> tuple[float, list]:
    async def run():
        async with LinkEnricher(settings) as enricher:
            started = time.perf_counter()
            results = await enricher.enrich(articles, deadline_s=600)
            return time.perf_counter() - started, results

    return asyncio.run(run())


def timed_ingest(articles: list[Article], workdir: Path, links: LinkSettings | None,
                 batch: int) -> tuple[float, dict[str, int]]:
    """Push ``articles`` to a fresh ingestion service in batches of ``batch``; the wall
    time of all pushes and the stored items' fetch outcomes."""
    workdir.mkdir(parents=True)
    config = IngestConfig(database_url=f"sqlite:///{workdir / 'ingest.db'}",
                          classifier_url=f"http://127.0.0.1:{free_port()}",
                          retry_initial_s=3600, retry_max_s=3600, links=links,
                          link_deadline_s=600)
    records = [a.model_dump(mode="json", exclude_none=True) for a in articles]
    with serve_app(create_ingest_app(config)) as url, httpx.Client(timeout=900) as client:
        started = time.perf_counter()
        for i in range(0, len(records), batch):
            answer = client.post(f"{url}/v1/items",
                                 json={"articles": records[i:i + batch], "source": "bench"})
            answer.raise_for_status()
        seconds = time.perf_counter() - started
    outcomes: dict[str, int] = {}
    with sqlite3.connect(workdir / "ingest.db") as db:
        for (status, count) in db.execute(
                "SELECT fetch_status, count(*) FROM item_links GROUP BY fetch_status"):
            outcomes[status] = count
        stored = db.execute("SELECT count(*) FROM items").fetchone()[0]
    outcomes["stored_items"] = stored
    return seconds, outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=400, help="Stories (pages) to serve.")
    parser.add_argument("--sites", type=int, default=4, help="Local servers (hosts).")
    parser.add_argument("--extensive-sample", type=int, default=100,
                        help="Pages timed again with htmldate's extensive date search.")
    parser.add_argument("--ingest-batch", type=int, default=50,
                        help="Items per push in the ingestion-service comparison.")
    parser.add_argument("--out", type=Path, default=Path("bench/results/links.json"))
    args = parser.parse_args()

    docs = [d for d in read_collection(Paths().reuters_dir)
            if d.title and len(d.body.split()) >= 150][:args.pages]
    pages_by_site: list[dict[str, bytes]] = [{} for _ in range(args.sites)]
    stories = []
    for n, doc in enumerate(docs):
        published = doc.date.astimezone(timezone.utc).isoformat()
        page = news_page(doc.title, doc.body, published)
        pages_by_site[n % args.sites][f"/story/{n}"] = page
        stories.append((n % args.sites, f"/story/{n}", doc, page))
    page_bytes = [page for *_, page in stories]

    # 1. Extraction alone, in this thread. The first pass includes the libraries'
    # first-use costs; the second is the steady state the stage runs at.
    def extract_all(extensive: bool, limit: int | None = None) -> tuple[float, list]:
        started = time.perf_counter()
        found = [extract_article(page, f"http://bench.example/{i}",
                                 extensive_date_search=extensive)
                 for i, page in enumerate(page_bytes[:limit])]
        return time.perf_counter() - started, found

    first_pass_s, _ = extract_all(False)
    extract_s, extracted = extract_all(False)
    sample = min(len(page_bytes), args.extensive_sample)
    extensive_first_s, _ = extract_all(True, sample)
    extensive_s, _ = extract_all(True, sample)
    plain_sample_s, _ = extract_all(False, sample)
    recall = statistics.mean(
        1.0 if doc.body.split("\n")[0].strip()[:60] in (e.text if e else "") else 0.0
        for (_, _, doc, _), e in zip(stories, extracted))

    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        bases = [stack.enter_context(serve_pages(pages)) for pages in pages_by_site]
        teasers = [Article(id=n, title=doc.title, link=bases[site] + path,
                           text=doc.body.split(".")[0] + ". Read more",
                           date_published=datetime(1987, 3, 1, tzinfo=timezone.utc))
                   for n, (site, path, doc, _) in enumerate(stories)]
        full = [a.model_copy(update={"text": doc.body})
                for a, (_, _, doc, _) in zip(teasers, stories)]
        settings = LinkSettings(cache_path=Path(tmp) / "cache.sqlite", per_host_interval_s=0.0,
                                per_host_concurrency=4, max_concurrency=16,
                                allow_networks=["127.0.0.0/8"])  # the site is on loopback
        cold_s, cold = timed_enrich(teasers, settings)
        warm_s, warm = timed_enrich(teasers, settings)
        skip_s, skipped = timed_enrich(full, settings)
        # Same cold run without the HTTP cache: what storing the pages costs.
        uncached_s, uncached = timed_enrich(teasers, settings.model_copy(
            update={"cache_path": None}))
        # 6. Through the ingestion service, stage off then on (its own empty cache).
        ingest_off_s, ingest_off = timed_ingest(teasers, Path(tmp) / "ingest-off", None,
                                                args.ingest_batch)
        ingest_on_s, ingest_on = timed_ingest(
            teasers, Path(tmp) / "ingest-on",
            settings.model_copy(update={"cache_path": Path(tmp) / "ingest-cache.sqlite"}),
            args.ingest_batch)

    def outcome_counts(results: list) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in results:
            counts[r.provenance.fetch_status] = counts.get(r.provenance.fetch_status, 0) + 1
        return counts

    n = len(stories)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_at_end": os.getloadavg(),
        "command": "bench/bench_links.py " + " ".join(sys.argv[1:]),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "pages": n, "sites": args.sites,
        "mean_page_kib": round(statistics.mean(len(p) for p in page_bytes) / 1024, 1),
        "extraction_only": {
            "first_pass_seconds": round(first_pass_s, 3),
            "seconds": round(extract_s, 3), "pages_per_s": round(n / extract_s, 1),
            "ms_per_page": round(1000 * extract_s / n, 2),
            "first_paragraph_found_fraction": round(recall, 3)},
        "extensive_date_search": {
            "pages": sample, "first_pass_seconds": round(extensive_first_s, 3),
            "ms_per_page": round(1000 * extensive_s / sample, 2),
            "ms_per_page_without": round(1000 * plain_sample_s / sample, 2),
            "ratio": round(extensive_s / plain_sample_s, 2)},
        "stage_cold_cache": {
            "seconds": round(cold_s, 3), "items_per_s": round(n / cold_s, 1),
            "ms_per_item": round(1000 * cold_s / n, 2), "outcomes": outcome_counts(cold)},
        "stage_warm_cache_revalidated": {
            "seconds": round(warm_s, 3), "items_per_s": round(n / warm_s, 1),
            "ms_per_item": round(1000 * warm_s / n, 2), "outcomes": outcome_counts(warm),
            "revalidated": sum(r.provenance.revalidated for r in warm)},
        "stage_no_http_cache": {
            "seconds": round(uncached_s, 3), "ms_per_item": round(1000 * uncached_s / n, 2),
            "outcomes": outcome_counts(uncached)},
        "stage_not_needed": {
            "seconds": round(skip_s, 3), "ms_per_item": round(1000 * skip_s / n, 3),
            "outcomes": outcome_counts(skipped)},
        "ingestion_service": {
            "items": n, "batch": args.ingest_batch,
            "stage_off": {"seconds": round(ingest_off_s, 3),
                          "ms_per_item": round(1000 * ingest_off_s / n, 2),
                          "stored": ingest_off},
            "stage_on_cold_cache": {"seconds": round(ingest_on_s, 3),
                                    "ms_per_item": round(1000 * ingest_on_s / n, 2),
                                    "stored": ingest_on},
            "added_ms_per_item": round(1000 * (ingest_on_s - ingest_off_s) / n, 2),
            "on_over_off": round(ingest_on_s / ingest_off_s, 2)},
        "ratios": {
            "cold_stage_over_extraction_only": round(cold_s / extract_s, 2),
            "warm_over_cold": round(warm_s / cold_s, 2),
            "cold_over_no_cache": round(cold_s / uncached_s, 2)},
        "settings": settings.model_dump(mode="json"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "settings"}, indent=2))


if __name__ == "__main__":
    main()
