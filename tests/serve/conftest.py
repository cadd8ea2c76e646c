"""Fixtures of the serving tests: the API over the real model, on real HTTP."""

import pytest

from serve.app import create_app
from classify.backends import InProcessBackend
from classify.classifier import build_classifier
from serve.vllm_server import wait_until_ok
from tests.conftest import serve_app

TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def api(base_model_dir, registry_dir, trained_adapter, tokenizer):
    from pipeline.prompt import label_token_ids

    backend = InProcessBackend(base_model_dir, label_token_ids(tokenizer))
    classifier = build_classifier(backend, base_model_dir, registry_dir,
                                  max_prompt_tokens=512, threshold=0.5)
    app = create_app(classifier, max_batch=4, max_request_bytes=2 * 1024 * 1024,
                     admin_token=TOKEN, watch_interval_s=None)
    with serve_app(app) as url:
        wait_until_ok(f"{url}/ready", 120)
        yield url


