"""Helpers shared by the ingestion tests (no tests here): the real classification API on
a chosen or free port (``bench/classification_api.py``, shared with the ingestion
benchmark), scraping /metrics, waiting for conditions."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

# Re-exported for the tests: one harness shared with bench/bench_ingest.py.
from bench.classification_api import classification_api, make_classifier  # noqa: F401
from serve.local_http import serve_app


def serve_on_port(app, port: int):
    """Run an ASGI app with uvicorn on ``port`` (a restart must reuse the port)."""
    return serve_app(app, port)


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
