"""One article followed at run time, from a feed to a stored prediction, and one request
through the classification API: each visits the packages in layer order, each once.

``tests/test_layout.py`` reads the import statements; this watches the code that runs.
A profiler sees every call of a project function, in every thread (the feed poller, the
classify loop, both uvicorn servers), and records the packages on that call's stack from
the outermost project frame inwards, consecutive frames of one package collapsed. A
callback from a lower package into a higher one (pipeline calling back into ingestion,
the classifier reaching into ``train``) shows as a package met twice or out of order.

Real parts: the base model on the in-process backend, the classification API and the
ingestion service on real HTTP, an RSS feed on a real loopback server, a SQLite file.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import httpx
import pytest

from classify.backends import InProcessBackend
from classify.classifier import build_classifier
from ingestion.api import create_ingest_app
from ingestion.config import FeedSourceConfig, IngestConfig
from pipeline.prompt import label_token_ids
from serve.app import create_app
from serve.vllm_server import wait_until_ok
from tests.conftest import serve_app, serve_routes
from tests.ingestion.test_ingest_support import sample, scrape, wait_for

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("pipeline", "classify", "train", "serve", "ingestion", "signals")
"""Left to right; ``train`` and ``serve`` are siblings, so a stack holding both is also
out of order (neither may call the other)."""

MIDDLEWARE = {"serve/auth.py:__call__", "serve/errors.py:__call__"}
"""The ASGI middleware both APIs share (token scopes, the body limit). Wrapping an app,
each hands every request (and the lifespan) on to it with ``await self.app(...)``, so
its frame sits above the ingestion API's own: HTTP plumbing the service mounts, not a
call from ``serve`` into ``ingestion``. Only these frames are left out of a path."""

RSS = b"""<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>Wire</title><link>http://example.com/</link>
<item><title>Acme to buy Beta</title><guid>walk-1</guid>
<pubDate>Mon, 06 Apr 1987 10:00:00 GMT</pubDate>
<description>Acme Corp said it agreed to acquire Beta Inc for 40 mln dlrs in cash.</description>
</item></channel></rss>"""


class StackRecorder:
    """Every distinct package path seen on a stack at a project call, per thread."""

    def __init__(self) -> None:
        self.paths: set[tuple[str, ...]] = set()
        self.examples: dict[tuple[str, ...], list[str]] = {}
        self.prefix = str(ROOT) + "/"

    def package(self, filename: str) -> str | None:
        if not filename.startswith(self.prefix):
            return None
        top = filename[len(self.prefix):].split("/", 1)[0]
        return top if top in LAYERS else None  # tests/, bench/: the harness, not the walk

    def __call__(self, frame, event, arg) -> None:
        if event != "call" or self.package(frame.f_code.co_filename) is None:
            return
        path: list[str] = []
        where: list[str] = []
        called = frame
        while frame is not None:
            package = self.package(frame.f_code.co_filename)
            name = f"{frame.f_code.co_filename[len(self.prefix):]}:{frame.f_code.co_name}"
            if frame is not called and name in MIDDLEWARE:
                package = None  # a middleware passing a request on (its own call counts)
            if package is not None and (not path or path[-1] != package):
                path.append(package)
                where.append(name)
            frame = frame.f_back
        key = tuple(reversed(path))
        if key not in self.paths:
            self.paths.add(key)
            self.examples[key] = list(reversed(where))

    def __enter__(self) -> StackRecorder:
        threading.setprofile(self)
        sys.setprofile(self)
        return self

    def __exit__(self, *exc) -> None:
        sys.setprofile(None)
        threading.setprofile(None)


def out_of_order(paths: set[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Paths that meet a package twice, or go from a package to one not below it."""
    rank = {"pipeline": 0, "classify": 1, "train": 2, "serve": 2, "ingestion": 3,
            "signals": 4}
    return sorted(p for p in paths
                  if len(set(p)) < len(p) or any(rank[a] <= rank[b] for a, b in zip(p, p[1:])))


def test_the_checker_sees_a_callback_and_a_sibling():
    assert out_of_order({("ingestion", "pipeline", "ingestion"), ("serve", "train"),
                         ("ingestion", "serve", "classify", "pipeline")}) == [
        ("ingestion", "pipeline", "ingestion"), ("serve", "train")]


@pytest.mark.slow
def test_one_article_and_one_request_visit_each_package_once(base_model_dir, tokenizer,
                                                             tmp_path):
    registry = tmp_path / "registry"
    registry.mkdir()
    classifier = build_classifier(InProcessBackend(base_model_dir, label_token_ids(tokenizer)),
                                  base_model_dir, registry, max_prompt_tokens=160,
                                  threshold=0.5)
    # threading.setprofile reaches threads started after it: start the servers inside
    with StackRecorder() as recorder, serve_app(
            create_app(classifier, max_batch=8, watch_interval_s=None)) as api:
        wait_until_ok(f"{api}/ready", 120, what="classification API")
        # one request through the API
        answer = httpx.post(f"{api}/v1/classify", json={"adapter": "base", "articles": [
            {"id": "r1", "title": "Acme to buy Beta",
             "text": "Acme Corp said it agreed to acquire Beta Inc."}]}, timeout=120)
        assert answer.status_code == 200, answer.text
        # one article from a feed to a stored prediction
        with serve_routes({"/wire.rss": (200, "application/rss+xml", RSS)}) as feeds:
            config = IngestConfig(
                database_url=f"sqlite:///{tmp_path / 'ingest.db'}", classifier_url=api,
                adapter="base", idle_poll_s=0.2,
                feeds=[FeedSourceConfig(name="wire", url=f"{feeds}/wire.rss", interval_s=60,
                                        allow_networks=["127.0.0.0/8"])])
            with serve_app(create_ingest_app(config)) as ingest:
                wait_for(lambda: sample(scrape(ingest), "signals_ingest_classified_items_total",
                                        role="primary") == 1, 120, "the stored prediction")
                stored = httpx.get(f"{ingest}/v1/items/1", timeout=10).json()
    assert stored["predictions"][0]["adapter"] == "base"

    paths = recorder.paths
    assert out_of_order(paths) == [], [recorder.examples[p] for p in out_of_order(paths)]
    # the API (its stacks start in serve) hands the articles to classify, whose batching
    # task (stacks of its own) renders them with pipeline's prompt
    assert {p for path in paths if path[0] == "serve" for p in path} == {
        "serve", "classify", "pipeline"}
    assert ("serve", "classify") in paths and ("classify", "pipeline") in paths
    # the service reads the feed with pipeline and builds its request with serve's body
    assert ("ingestion", "pipeline") in paths and ("ingestion", "serve") in paths
    # no stack anywhere reached training code
    assert {p for path in paths for p in path} == {"ingestion", "serve", "classify",
                                                    "pipeline"}
