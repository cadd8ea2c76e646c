"""Property test over both services' published OpenAPI documents, with valid tokens.

schemathesis generates requests for every operation from ``/openapi.json`` and sends
them over real HTTP to the running apps (the classification API over the in-process
backend, the real model and an empty registry; the ingestion API over SQLite), with
the admin token, and
checks status codes, content types, headers and response bodies against the
document, that schema-valid requests are accepted, and that no request gets a 5xx.
Every generated request is also sent with a wrong token: a guarded route must never
accept it. Its pytest plugin (``from_fixture``) breaks on pytest 9 (``Function._nodeid``),
so the cases are drawn from each operation's hypothesis strategy directly.

The counts go to ``bench/results/fuzz.json`` (figures in ``docs/RELIABILITY.md``).
``SIGNALS_FUZZ_EXAMPLES`` sets the examples per operation (default 25).
"""

import json
import os
from collections import Counter
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import CHECKS

from ingestion.api import create_ingest_app
from ingestion.config import IngestConfig
from pipeline.prompt import label_token_ids
from serve.app import create_app
from serve.vllm_server import wait_until_ok
from tests.conftest import free_port, serve_app
from train.backends import InProcessBackend
from train.classifier import build_classifier

EXAMPLES_PER_OPERATION = int(os.environ.get("SIGNALS_FUZZ_EXAMPLES", "25"))
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "fuzz.json"
SERVE_ADMIN, SERVE_CLASSIFY = "fuzz-serve-admin", "fuzz-serve-classify"
INGEST_ADMIN = "fuzz-ingest-admin"
OPEN_PATHS = {"/health", "/ready"}


@pytest.fixture(scope="module")
def api(base_model_dir, tmp_path_factory, tokenizer):
    """The classification API with both tokens, over the real model (empty registry)."""
    backend = InProcessBackend(base_model_dir, label_token_ids(tokenizer))
    classifier = build_classifier(backend, base_model_dir, tmp_path_factory.mktemp("reg"),
                                  max_prompt_tokens=512, threshold=0.5)
    app = create_app(classifier, max_batch=4, admin_token=SERVE_ADMIN,
                     classify_token=SERVE_CLASSIFY, watch_interval_s=None)
    with serve_app(app) as url:
        wait_until_ok(f"{url}/ready", 300)
        yield url


@pytest.fixture(scope="module")
def ingest_api(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz-ingest")
    config = IngestConfig(database_url=f"sqlite:///{tmp / 'ingest.db'}",
                          classifier_url=f"http://127.0.0.1:{free_port()}",
                          write_token="fuzz-write", feedback_token="fuzz-feedback",
                          read_token="fuzz-read", admin_token=INGEST_ADMIN,
                          idle_poll_s=5, retry_initial_s=5)
    with serve_app(create_ingest_app(config)) as url:
        yield url


def fuzz(url: str, token: str) -> dict:
    """Fuzz every operation of the service at ``url``; the counts."""
    checks = [check for check in CHECKS.get_all()
              # These two need stateful links between operations, which the document
              # does not declare; ignored_auth is measured directly below.
              if check.__name__ not in ("use_after_free", "ensure_resource_availability",
                                        "ignored_auth")]
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    counts = Counter()
    failures: list[str] = []
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def call(case):
            counts["requests"] += 1
            response = case.call(headers={"Authorization": f"Bearer {token}"}, timeout=120)
            counts["server_errors"] += response.status_code >= 500
            try:
                case.validate_response(response, checks=checks)
            except (Exception, BaseExceptionGroup) as error:  # a check failed: record it
                counts["check_failures"] += 1
                body = json.dumps(case.body, default=str)[:300] if case.body is not None else ""
                failures.append(f"{operation.method.upper()} {operation.path} {body}: "
                                f"{type(error).__name__}: {str(error)[:300]}")
            if operation.path not in OPEN_PATHS:
                unauthenticated = case.call(headers={"Authorization": "Bearer wrong"},
                                            timeout=120)
                counts["unauthenticated_requests"] += 1
                counts["unauthenticated_accepted"] += unauthenticated.status_code < 400

        call()
    return {"operations": len(operations), **counts, "failures": failures[:20]}


def test_both_services_conform_to_their_published_schema(api, ingest_api):
    results = {"classification": fuzz(api, SERVE_ADMIN), "ingestion": fuzz(ingest_api, INGEST_ADMIN),
               "examples_per_operation": EXAMPLES_PER_OPERATION}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    for service in ("classification", "ingestion"):
        found = results[service]
        assert found["requests"] >= EXAMPLES_PER_OPERATION, found
        assert found.get("server_errors", 0) == 0, found
        assert found.get("unauthenticated_accepted", 0) == 0, found
        assert found.get("check_failures", 0) == 0, found["failures"]
    # The open routes stay open.
    assert httpx.get(f"{api}/health").status_code == 200
