"""The real classification API over the in-process backend, on a loopback port, with a
count of the classify requests in flight: what the ingestion benchmark (and the
ingestion tests) run the service against."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.prompt import label_token_ids
from serve.app import create_app
from serve.local_http import free_port, serve_app
from serve.vllm_server import wait_until_ok
from classify.backends import InProcessBackend
from classify.classifier import SignalClassifier, build_classifier


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


def make_classifier(base_model_dir: Path, registry_dir: Path, tokenizer,
                    max_prompt_tokens: int = 160) -> SignalClassifier:
    """The classifier over the in-process (transformers + peft) backend."""
    backend = InProcessBackend(base_model_dir, label_token_ids(tokenizer))
    return build_classifier(backend, base_model_dir, registry_dir,
                            max_prompt_tokens=max_prompt_tokens, threshold=0.5)


@contextmanager
def classification_api(classifier: SignalClassifier,
                       port: int | None = None) -> Iterator[tuple[str, ClassifyRequestCounter]]:
    """The real classification API (create_app over ``classifier``) on real HTTP;
    yields (url, request counter)."""
    counter = ClassifyRequestCounter(create_app(classifier, max_batch=64,
                                                watch_interval_s=None))
    with serve_app(counter, port or free_port()) as url:
        wait_until_ok(f"{url}/ready", 120, what="classification API")
        yield url, counter
