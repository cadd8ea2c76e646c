"""The classification API over real HTTP with the in-process backend (real model)."""

import json

import httpx
import pytest

from serve.app import create_app
from serve.backends import InProcessBackend, VLLMBackend
from serve.classifier import build_classifier
from serve.vllm_server import wait_until_ok
from tests.conftest import free_port, serve_app

ACQ = {"id": "a1", "title": "Acme to acquire Beta for 40 mln dlrs",
       "text": "Acme Corp said it agreed to acquire Beta Inc in a cash deal worth 40 mln dlrs."}
EARN = {"id": "e1", "title": "Gamma Corp 4th qtr net",
        "text": "Shr 30 cts vs 25 cts. Net 1.2 mln vs 1.0 mln. Revs 10 mln vs 9 mln."}


@pytest.fixture(scope="module")
def api(base_model_dir, registry_dir, trained_adapter, tokenizer):
    from pipeline.prompt import label_token_ids

    backend = InProcessBackend(base_model_dir, label_token_ids(tokenizer))
    classifier = build_classifier(backend, base_model_dir, registry_dir,
                                  max_prompt_tokens=512, threshold=0.5)
    app = create_app(classifier, max_batch=4, max_request_bytes=2 * 1024 * 1024)
    with serve_app(app) as url:
        wait_until_ok(f"{url}/ready", 120)
        yield url


def _error(response, status, kind):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["type"] == kind
    assert body["error"]["message"]
    return body["error"]["message"]


def test_classify_one_article(api):
    response = httpx.post(f"{api}/v1/classify", json={"article": ACQ})
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    assert result["id"] == "a1" and result["adapter"] == "base"
    assert 0.0 <= result["p_signal"] <= 1.0
    assert result["label"] == int(result["p_signal"] >= 0.5) and result["threshold"] == 0.5
    assert result["truncated"] is False


def test_batch_keeps_order_and_threshold_is_applied(api):
    articles = [ACQ, EARN, {**ACQ, "id": "a2"}]
    for threshold in (0.0, 1.0):
        response = httpx.post(f"{api}/v1/classify",
                              json={"articles": articles, "threshold": threshold})
        results = response.json()["results"]
        assert [r["id"] for r in results] == ["a1", "e1", "a2"]
        assert all(r["threshold"] == threshold for r in results)
        assert all(r["label"] == int(r["p_signal"] >= threshold) for r in results)
    # the same article gets the same probability wherever it sits in a batch
    assert results[0]["p_signal"] == pytest.approx(results[2]["p_signal"], abs=1e-5)


def test_adapter_by_name_hot_loads_and_changes_answers(api, trained_adapter):
    base = httpx.post(f"{api}/v1/classify", json={"articles": [ACQ, EARN]}).json()["results"]
    tuned = httpx.post(f"{api}/v1/classify", timeout=60,
                       json={"articles": [ACQ, EARN], "adapter": trained_adapter.name})
    assert tuned.status_code == 200, tuned.text
    tuned = tuned.json()["results"]
    assert all(r["adapter"] == trained_adapter.name for r in tuned)
    assert max(abs(b["p_signal"] - t["p_signal"]) for b, t in zip(base, tuned)) > 0.01
    listing = httpx.get(f"{api}/v1/adapters").json()["adapters"]
    assert {a["name"]: a["loaded"] for a in listing} == {trained_adapter.name: True}


def test_malformed_json_is_400(api):
    response = httpx.post(f"{api}/v1/classify", content=b'{"article": {"id": 1, "title": ',
                          headers={"content-type": "application/json"})
    _error(response, 400, "malformed_json")


def test_non_utf8_body_is_400(api):
    body = b'{"article": {"id": 1, "title": "caf\xe9 \xff", "text": "x"}}'
    response = httpx.post(f"{api}/v1/classify", content=body,
                          headers={"content-type": "application/json"})
    assert "UTF-8" in _error(response, 400, "bad_encoding")


def test_empty_article_is_422(api):
    response = httpx.post(f"{api}/v1/classify",
                          json={"article": {"id": 3, "title": "  ", "text": ""}})
    assert "empty" in _error(response, 422, "invalid_request")


@pytest.mark.parametrize("body, needle", [
    ({"article": {"title": "no id", "text": "x"}}, "id"),
    ({"article": ACQ, "articles": [EARN]}, "exactly one"),
    ({}, "exactly one"),
    ({"articles": []}, "empty"),
    ({"article": ACQ, "threshold": 1.5}, "threshold"),
    ({"article": {**ACQ, "signal": 7}}, "signal"),
])
def test_schema_violations_are_422(api, body, needle):
    assert needle in _error(httpx.post(f"{api}/v1/classify", json=body), 422, "invalid_request")


def test_one_megabyte_article_is_truncated_and_says_so(api):
    huge = {"id": "big", "title": "Long report", "text": "The market moved. " * 58_000}
    assert len(json.dumps(huge)) > 1_000_000
    response = httpx.post(f"{api}/v1/classify", json={"article": huge}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["truncated"] is True


def test_huge_title_is_truncated_not_an_error(api):
    article = {"id": "t", "title": "Takeover bid " * 40_000, "text": "Details follow."}
    response = httpx.post(f"{api}/v1/classify", json={"article": article}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["truncated"] is True


def test_body_over_the_limit_is_413(api):
    huge = {"id": "too-big", "title": "x", "text": "y" * (3 * 1024 * 1024)}
    _error(httpx.post(f"{api}/v1/classify", json={"article": huge}), 413, "request_too_large")


def test_batch_over_the_limit_is_422(api):
    response = httpx.post(f"{api}/v1/classify", json={"articles": [ACQ] * 5})
    assert "at most 4" in _error(response, 422, "batch_too_large")


def test_unknown_adapter_is_404_with_its_name(api):
    response = httpx.post(f"{api}/v1/classify", json={"article": ACQ, "adapter": "lora-nope"})
    assert "lora-nope" in _error(response, 404, "adapter_not_found")
    _error(httpx.post(f"{api}/v1/adapters/lora-nope/load"), 404, "adapter_not_found")


@pytest.mark.parametrize("name", ["../../etc/passwd", "..", "a/../../b"])
def test_path_traversal_adapter_names_are_refused(api, name):
    response = httpx.post(f"{api}/v1/classify", json={"article": ACQ, "adapter": name})
    _error(response, 400, "invalid_adapter_name")


def test_metrics_count_requests_and_labels(api):
    httpx.post(f"{api}/v1/classify", json={"article": ACQ})
    text = httpx.get(f"{api}/metrics").text
    assert 'signals_classify_requests_total{adapter="base",outcome="ok"}' in text
    assert "signals_classify_latency_seconds_bucket" in text
    assert 'signals_api_errors_total{kind="adapter_not_found"}' in text


def test_vllm_not_running_is_503(base_model_dir, registry_dir, tokenizer):
    from pipeline.prompt import label_token_ids

    backend = VLLMBackend(f"http://127.0.0.1:{free_port()}", "base", label_token_ids(tokenizer),
                          timeout_s=5)
    classifier = build_classifier(backend, base_model_dir, registry_dir, 512, 0.5)
    with serve_app(create_app(classifier, warmup_retry_s=0.2)) as url:
        assert "unreachable" in _error(httpx.get(f"{url}/ready"), 503, "not_ready")
        response = httpx.post(f"{url}/v1/classify", json={"article": ACQ})
        assert "unreachable" in _error(response, 503, "backend_unavailable")
        assert httpx.get(f"{url}/health").status_code == 200


def test_vllm_too_slow_is_504(base_model_dir, registry_dir, tokenizer):
    """A server that accepts the connection but never answers."""
    import socket

    from pipeline.prompt import label_token_ids

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        backend = VLLMBackend(f"http://127.0.0.1:{port}", "base", label_token_ids(tokenizer),
                              timeout_s=1.0)
        classifier = build_classifier(backend, base_model_dir, registry_dir, 512, 0.5)
        with serve_app(create_app(classifier, warmup_retry_s=60)) as url:
            response = httpx.post(f"{url}/v1/classify", json={"article": ACQ}, timeout=30)
            assert "did not answer" in _error(response, 504, "backend_timeout")
