"""Helpers shared by the ingestion tests (no tests here): the real classification API on
a chosen or free port, scraping /metrics, waiting for conditions."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from serve.app import create_app
from train.backends import InProcessBackend
from train.classifier import build_classifier
from serve.vllm_server import wait_until_ok
from tests.conftest import free_port, serve_app


class ClassifyRequestCounter:
    """ASGI middleware around the real API: how many /v1/classify requests are running
    right now (to catch the moment a batch is in flight)."""

    def __init__(self, app):
        self.app = app
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/v1/classify":
            return await self.app(scope, receive, send)
        self.in_flight += 1
        try:
            return await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def serve_on_port(app, port: int):
    """Run an ASGI app with uvicorn on ``port`` (a restart must reuse the port)."""
    return serve_app(app, port)


def make_classifier(base_model_dir: Path, registry_dir: Path, tokenizer,
                    max_prompt_tokens: int = 160):
    from pipeline.prompt import label_token_ids

    backend = InProcessBackend(base_model_dir, label_token_ids(tokenizer))
    return build_classifier(backend, base_model_dir, registry_dir,
                            max_prompt_tokens=max_prompt_tokens, threshold=0.5)


@contextmanager
def classification_api(classifier, port: int | None = None):
    """The real classification API (create_app over ``classifier``) on real HTTP;
    yields (url, request counter)."""
    counter = ClassifyRequestCounter(create_app(classifier, max_batch=64,
                                                watch_interval_s=None))
    with serve_on_port(counter, port or free_port()) as url:
        wait_until_ok(f"{url}/ready", 120, what="classification API")
        yield url, counter


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of ``url``/metrics: (sample name, label items) -> value."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def sample(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, frozenset((k, str(v)) for k, v in labels.items())))


def wait_for(condition, timeout_s: float, what: str, interval_s: float = 0.2):
    """Poll ``condition`` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)
