"""Token scopes of both HTTP APIs, over real HTTP: every guarded route against no token,
an unknown token, each scope's token and the admin token; the check runs before the
body is read; open routes stay open; 405 carries ``Allow``; both APIs share the body
limit and the encoding check."""

import httpx
import pytest

from ingestion.api import create_ingest_app
from ingestion.config import IngestConfig
from pipeline.prompt import label_token_ids
from serve.app import create_app
from serve.vllm_server import wait_until_ok
from tests.conftest import free_port, serve_app
from classify.backends import InProcessBackend
from classify.classifier import build_classifier
from classify.registry import AdapterRegistry
from classify.variants import publish_variant

CLASSIFY, ADMIN = "serve-classify-token", "serve-admin-token"
WRITE, FEEDBACK, READ, INGEST_ADMIN = "ing-write", "ing-feedback", "ing-read", "ing-admin"
ARTICLE = {"id": "a1", "title": "Acme agrees takeover by Beta Corp",
           "text": "Acme said it agreed to be acquired for cash."}


def bearer(token: str | None) -> dict:
    return {"Authorization": f"Bearer {token}"} if token else {}


def error_of(response: httpx.Response, status: int, kind: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["type"] == kind, body
    return body["error"]


@pytest.fixture(scope="module")
def guarded_api(base_model_dir, tmp_path_factory, tokenizer):
    """The classification API with both tokens set, over the real model and an empty
    registry (admin calls that pass the guard reach the handler: 404 for 'lora-nope')."""
    backend = InProcessBackend(base_model_dir, label_token_ids(tokenizer))
    classifier = build_classifier(backend, base_model_dir, tmp_path_factory.mktemp("reg"),
                                  max_prompt_tokens=512, threshold=0.5)
    app = create_app(classifier, max_batch=4, max_request_bytes=64 * 1024,
                     admin_token=ADMIN, classify_token=CLASSIFY, watch_interval_s=None)
    with serve_app(app) as url:
        wait_until_ok(f"{url}/ready", 120)
        yield url


@pytest.fixture(scope="module")
def ingest_api(tmp_path_factory):
    """The ingestion API with every token set; its classifier is a port nobody serves
    (items stay pending, which these tests do not need)."""
    tmp = tmp_path_factory.mktemp("ingest-auth")
    config = IngestConfig(database_url=f"sqlite:///{tmp / 'ingest.db'}",
                          classifier_url=f"http://127.0.0.1:{free_port()}",
                          drop_dir=tmp / "drop", write_token=WRITE, feedback_token=FEEDBACK,
                          read_token=READ, admin_token=INGEST_ADMIN,
                          max_request_bytes=16 * 1024, idle_poll_s=5, retry_initial_s=5)
    with serve_app(create_ingest_app(config)) as url:
        yield url


def test_classification_api_scopes(guarded_api):
    url = guarded_api
    classify = lambda token: httpx.post(f"{url}/v1/classify", json={"article": ARTICLE},  # noqa: E731
                                        headers=bearer(token), timeout=60)
    for token in (None, "not-a-token", CLASSIFY[:-1], CLASSIFY + "x"):
        error = error_of(classify(token), 401, "unauthorized")
        assert "SIGNALS_SERVE_CLASSIFY_TOKEN" in error["message"]
    assert classify(None).headers["WWW-Authenticate"].startswith("Bearer")
    for token in (CLASSIFY, ADMIN):  # the admin token grants every scope
        response = classify(token)
        assert response.status_code == 200, response.text
        assert response.json()["results"][0]["id"] == "a1"
    error_of(httpx.get(f"{url}/v1/adapters"), 401, "unauthorized")
    assert httpx.get(f"{url}/v1/adapters", headers=bearer(CLASSIFY)).status_code == 200

    name = "lora-nope"
    admin_calls = [("POST", f"/v1/adapters/{name}/load", None),
                   ("POST", f"/v1/adapters/{name}/unload", None),
                   ("POST", "/v1/aliases/candidate", {"adapter": name})]
    for method, path, body in admin_calls:
        error_of(httpx.request(method, f"{url}{path}", json=body), 401, "unauthorized")
        error_of(httpx.request(method, f"{url}{path}", json=body, headers=bearer("nope")),
                 401, "unauthorized")
        # A valid token of the wrong scope: forbidden, and nothing changed.
        error_of(httpx.request(method, f"{url}{path}", json=body, headers=bearer(CLASSIFY)),
                 403, "forbidden")
    for method, path, body in admin_calls:  # past the guard: the handler answers
        response = httpx.request(method, f"{url}{path}", json=body, headers=bearer(ADMIN),
                                 timeout=120)
        error_of(response, 404, "adapter_not_found")
    response = httpx.post(f"{url}/v1/adapters/base/load", headers=bearer(ADMIN))
    error_of(response, 400, "base_model_not_adapter")


def test_only_the_admin_token_loads_a_version_that_is_not_loaded(
        base_model_dir, tmp_path, tokenizer, trained_adapter):
    """A classify token may name an alias or a loaded version; naming any other
    registry version is 403 ``adapter_not_loaded`` and moves no adapter slot (issue 29)."""
    registry_dir = tmp_path / "registry"
    aliased = publish_variant(registry_dir, trained_adapter, "aliased")
    cold = publish_variant(registry_dir, trained_adapter, "cold", scale=0.5)
    AdapterRegistry(registry_dir).set_alias("production", aliased.name)
    backend = InProcessBackend(base_model_dir, label_token_ids(tokenizer))
    classifier = build_classifier(backend, base_model_dir, registry_dir,
                                  max_prompt_tokens=512, threshold=0.5)
    app = create_app(classifier, admin_token=ADMIN, classify_token=CLASSIFY,
                     watch_interval_s=None)

    def classify(adapter: str, token: str) -> httpx.Response:
        return httpx.post(f"{url}/v1/classify", headers=bearer(token), timeout=120,
                          json={"items": [{"article": ARTICLE, "adapter": adapter},
                                          {"article": ARTICLE}]})

    def loaded() -> set[str]:
        listing = httpx.get(f"{url}/v1/adapters", headers=bearer(CLASSIFY)).json()
        return {a["name"] for a in listing["adapters"] if a["loaded"]}

    with serve_app(app) as url:
        wait_until_ok(f"{url}/ready", 120)
        assert loaded() == {aliased.name}  # warm-up loads alias targets only
        for name in ("production", aliased.name, "base"):
            response = classify(name, CLASSIFY)
            assert response.status_code == 200, response.text
        error = error_of(classify(cold.name, CLASSIFY), 403, "adapter_not_loaded")
        assert cold.name in error["message"] and "/v1/adapters/" in error["message"]
        assert loaded() == {aliased.name}  # refused before anything was loaded
        error_of(classify("lora-nope", CLASSIFY), 404, "adapter_not_found")

        response = classify(cold.name, ADMIN)  # the admin token loads on demand
        assert response.status_code == 200, response.text
        assert response.json()["results"][0]["adapter"] == cold.name
        assert loaded() == {aliased.name, cold.name}
        response = classify(cold.name, CLASSIFY)  # loaded now: any classify caller
        assert response.status_code == 200, response.text


@pytest.mark.parametrize("which", ["classification", "ingestion"])
def test_every_route_the_docs_lock_is_guarded_and_no_other(which, guarded_api, ingest_api):
    """Scopes are declared once, on the route: the guard's rules are read from the same
    declarations that put the lock into ``/openapi.json``. Every operation the document
    secures answers 401 without a token (before its handler or body); every other one
    does not."""
    import re

    url = guarded_api if which == "classification" else ingest_api
    document = httpx.get(f"{url}/openapi.json").json()
    secured, open_ = [], []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            (secured if operation.get("security") else open_).append((method.upper(), path))
    assert len(secured) >= (4 if which == "classification" else 8)
    for method, path in secured:
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        response = httpx.request(method, f"{url}{concrete}", timeout=30)
        error_of(response, 401, "unauthorized")
    for method, path in open_:
        response = httpx.request(method, f"{url}{path}", timeout=30)
        assert response.status_code != 401, (method, path, response.text)


def test_auth_is_checked_before_the_body(guarded_api):
    url = guarded_api
    bad_bodies = [b"{not json", b'{"article": 3}', "caf\u00e9".encode("latin-1"),
                  b"x" * (128 * 1024)]  # malformed, schema-invalid, not UTF-8, too big
    for body in bad_bodies:
        response = httpx.post(f"{url}/v1/classify", content=body,
                              headers={"Content-Type": "application/json"})
        error_of(response, 401, "unauthorized")
        response = httpx.post(f"{url}/v1/aliases/production", content=body,
                              headers={"Content-Type": "application/json"})
        error_of(response, 401, "unauthorized")
    # With the token, the same bodies get their own errors.
    expected = [(400, "malformed_json"), (422, "invalid_request"), (400, "bad_encoding"),
                (413, "request_too_large")]
    for body, (status, kind) in zip(bad_bodies, expected):
        response = httpx.post(f"{url}/v1/classify", content=body,
                              headers={"Content-Type": "application/json", **bearer(CLASSIFY)})
        error_of(response, status, kind)


def test_open_routes_need_no_token(guarded_api):
    for path in ("/health", "/ready", "/metrics", "/openapi.json"):
        assert httpx.get(f"{guarded_api}{path}").status_code == 200, path


def test_unknown_method_answers_405_with_allow(guarded_api, ingest_api):
    for url, path, allowed in [(guarded_api, "/v1/classify", "POST"),
                               (guarded_api, "/v1/aliases/production", "POST"),
                               (ingest_api, "/v1/items", "POST"),
                               (ingest_api, "/v1/feedback", "POST")]:
        response = httpx.delete(f"{url}{path}", headers=bearer(ADMIN))
        error_of(response, 405, "method_not_allowed")
        assert response.headers["Allow"] == allowed


def test_ingestion_api_scopes(ingest_api):
    url = ingest_api
    push = {"article": ARTICLE}
    feedback = {"external_id": "a1", "item_source": "push", "label": 1}
    routes = {  # route -> (method, body, the scope's own token)
        "/v1/items": ("POST", push, WRITE),
        "/v1/feedback": ("POST", feedback, FEEDBACK),
        "/v1/items/1": ("GET", None, READ),
        "/v1/signals": ("GET", None, READ),
        "/v1/quality": ("GET", None, READ),
        "/v1/drift": ("GET", None, READ),
    }
    for path, (method, body, own) in routes.items():
        call = lambda token: httpx.request(method, f"{url}{path}", json=body,  # noqa: E731
                                           headers=bearer(token))
        for token in (None, "not-a-token", own + "x"):
            error_of(call(token), 401, "unauthorized")
        for other in {WRITE, FEEDBACK, READ} - {own}:
            error_of(call(other), 403, "forbidden")
        # Pushed before feedback and reads (dict order), so both find item 1.
        for token in (own, INGEST_ADMIN):
            response = call(token)
            assert response.status_code == 200, (path, token, response.text)
    item = httpx.get(f"{url}/v1/items/1", headers=bearer(READ)).json()
    assert [f["label"] for f in item["feedback"]] == [1]  # recorded once, not by the refused
    for path in ("/health", "/metrics", "/openapi.json"):
        assert httpx.get(f"{url}{path}").status_code == 200, path


def test_ingestion_checks_token_before_body_then_limits_and_encoding(ingest_api):
    url = ingest_api
    json_type = {"Content-Type": "application/json"}
    for body in (b"{not json", b'{"articles": []}', b"\xff\xfe", b"x" * (32 * 1024)):
        error_of(httpx.post(f"{url}/v1/items", content=body, headers=json_type),
                 401, "unauthorized")
    error_of(httpx.post(f"{url}/v1/items", content=b"x" * (32 * 1024),
                        headers={**json_type, **bearer(WRITE)}), 413, "request_too_large")
    error = error_of(httpx.post(f"{url}/v1/items", content='{"article": {"id": "é"}}'
                                .encode("latin-1"), headers={**json_type, **bearer(WRITE)}),
                     400, "bad_encoding")
    assert "UTF-8" in error["message"]
    error_of(httpx.post(f"{url}/v1/feedback", content=b"{", headers={
        **json_type, **bearer(FEEDBACK)}), 400, "malformed_json")


def test_ingestion_scopes_without_tokens_are_open(tmp_path):
    """Development default: no tokens set, the routes are open (a warning is logged)."""
    config = IngestConfig(database_url=f"sqlite:///{tmp_path / 'ingest.db'}",
                          classifier_url=f"http://127.0.0.1:{free_port()}",
                          drop_dir=tmp_path / "drop", idle_poll_s=5, retry_initial_s=5)
    with serve_app(create_ingest_app(config)) as url:
        response = httpx.post(f"{url}/v1/items", json={"article": ARTICLE})
        assert response.status_code == 200 and response.json()["accepted"] == 1
