"""The classification API over real HTTP with the in-process backend (real model)."""

import json

import httpx
import pytest

from serve.app import create_app
from classify.backends import InProcessBackend, VLLMBackend
from classify.classifier import build_classifier
from serve.vllm_server import wait_until_ok
from tests.conftest import free_port, serve_app
from tests.serve.conftest import ADMIN, TOKEN

ACQ = {"id": "a1", "title": "Acme to acquire Beta for 40 mln dlrs",
       "text": "Acme Corp said it agreed to acquire Beta Inc in a cash deal worth 40 mln dlrs."}
EARN = {"id": "e1", "title": "Gamma Corp 4th qtr net",
        "text": "Shr 30 cts vs 25 cts. Net 1.2 mln vs 1.0 mln. Revs 10 mln vs 9 mln."}


def _error(response, status, kind):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["type"] == kind
    assert body["error"]["message"]
    return body["error"]["message"]


def test_classify_one_article(api):
    response = httpx.post(f"{api}/v1/classify", headers=ADMIN, json={"article": ACQ}, timeout=120)
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    assert result["id"] == "a1" and result["adapter"] == "base"
    assert 0.0 <= result["p_signal"] <= 1.0
    assert result["label"] == int(result["p_signal"] >= 0.5) and result["threshold"] == 0.5
    assert result["truncated"] is False


def test_batch_keeps_order_and_threshold_is_applied(api):
    articles = [ACQ, EARN, {**ACQ, "id": "a2"}]
    for threshold in (0.0, 1.0):
        response = httpx.post(f"{api}/v1/classify", headers=ADMIN,
                              json={"articles": articles, "threshold": threshold})
        results = response.json()["results"]
        assert [r["id"] for r in results] == ["a1", "e1", "a2"]
        assert all(r["threshold"] == threshold for r in results)
        assert all(r["label"] == int(r["p_signal"] >= threshold) for r in results)
    # the same article gets the same probability wherever it sits in a batch
    assert results[0]["p_signal"] == pytest.approx(results[2]["p_signal"], abs=1e-5)


def test_adapter_by_name_hot_loads_and_changes_answers(api, trained_adapter):
    base = httpx.post(f"{api}/v1/classify", headers=ADMIN, json={"articles": [ACQ, EARN]}).json()["results"]
    tuned = httpx.post(f"{api}/v1/classify", headers=ADMIN, timeout=60,
                       json={"articles": [ACQ, EARN], "adapter": trained_adapter.name})
    assert tuned.status_code == 200, tuned.text
    tuned = tuned.json()["results"]
    assert all(r["adapter"] == trained_adapter.name for r in tuned)
    assert max(abs(b["p_signal"] - t["p_signal"]) for b, t in zip(base, tuned)) > 0.01
    listing = httpx.get(f"{api}/v1/adapters").json()
    assert {a["name"]: a["loaded"] for a in listing["adapters"]}[trained_adapter.name] is True
    assert trained_adapter.name in listing["loaded"]


def test_malformed_json_is_400(api):
    response = httpx.post(f"{api}/v1/classify", content=b'{"article": {"id": 1, "title": ',
                          headers={"content-type": "application/json"})
    _error(response, 400, "malformed_json")


def test_non_utf8_body_is_400(api):
    body = b'{"article": {"id": 1, "title": "caf\xe9 \xff", "text": "x"}}'
    response = httpx.post(f"{api}/v1/classify", content=body,
                          headers={"content-type": "application/json"})
    assert "UTF-8" in _error(response, 400, "bad_encoding")


def test_empty_article_gets_its_own_error_and_the_others_are_classified(api):
    empty = {"id": 3, "title": "  ", "text": ""}
    response = httpx.post(f"{api}/v1/classify", headers=ADMIN, json={"articles": [ACQ, empty, EARN]},
                          timeout=60)
    assert response.status_code == 200, response.text
    first, failed, last = response.json()["results"]
    assert (first["id"], last["id"]) == (ACQ["id"], EARN["id"])
    assert 0.0 <= first["p_signal"] <= 1.0 and 0.0 <= last["p_signal"] <= 1.0
    assert failed["id"] == 3 and failed["error"]["type"] == "empty_article"
    alone = httpx.post(f"{api}/v1/classify", headers=ADMIN, json={"article": empty}).json()["results"]
    assert [r["error"]["type"] for r in alone] == ["empty_article"]


def test_empty_article_in_strict_mode_fails_the_request(api):
    response = httpx.post(f"{api}/v1/classify", headers=ADMIN, json={
        "articles": [ACQ, {"id": 3, "title": "  ", "text": ""}], "strict": True})
    assert "empty" in _error(response, 422, "invalid_request")


@pytest.mark.parametrize("body, needle", [
    ({"article": {"title": "no id", "text": "x"}}, "id"),
    ({"article": ACQ, "articles": [EARN]}, "exactly one"),
    ({}, "exactly one"),
    ({"articles": []}, "at least 1"),
    ({"article": ACQ, "threshold": 1.5}, "threshold"),
    ({"article": {**ACQ, "signal": 7}}, "signal"),
])
def test_schema_violations_are_422(api, body, needle):
    assert needle in _error(httpx.post(f"{api}/v1/classify", headers=ADMIN, json=body, timeout=120), 422, "invalid_request")


def test_one_megabyte_article_is_truncated_and_says_so(api):
    huge = {"id": "big", "title": "Long report", "text": "The market moved. " * 58_000}
    assert len(json.dumps(huge)) > 1_000_000
    response = httpx.post(f"{api}/v1/classify", headers=ADMIN, json={"article": huge}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["truncated"] is True


def test_huge_title_is_truncated_not_an_error(api):
    article = {"id": "t", "title": "Takeover bid " * 40_000, "text": "Details follow."}
    response = httpx.post(f"{api}/v1/classify", headers=ADMIN, json={"article": article}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["truncated"] is True


def test_body_over_the_limit_is_413(api):
    huge = {"id": "too-big", "title": "x", "text": "y" * (3 * 1024 * 1024)}
    _error(httpx.post(f"{api}/v1/classify", headers=ADMIN, json={"article": huge}), 413, "request_too_large")


def test_batch_over_the_limit_is_422(api):
    response = httpx.post(f"{api}/v1/classify", headers=ADMIN, json={"articles": [ACQ] * 5}, timeout=120)
    assert "at most 4" in _error(response, 422, "batch_too_large")


def test_unknown_adapter_is_404_with_its_name(api):
    response = httpx.post(f"{api}/v1/classify", headers=ADMIN, json={"article": ACQ, "adapter": "lora-nope"}, timeout=120)
    assert "lora-nope" in _error(response, 404, "adapter_not_found")
    _error(httpx.post(f"{api}/v1/adapters/lora-nope/load", headers=ADMIN), 404,
           "adapter_not_found")


@pytest.mark.parametrize("name", ["../../etc/passwd", "..", "a/../../b"])
def test_path_traversal_adapter_names_are_refused(api, name):
    """The published name pattern refuses them in the body and in the path."""
    response = httpx.post(f"{api}/v1/classify", headers=ADMIN, json={"article": ACQ, "adapter": name}, timeout=120)
    assert "pattern" in _error(response, 422, "invalid_request")
    response = httpx.post(f"{api}/v1/aliases/production", json={"adapter": name},
                          headers=ADMIN)
    assert "pattern" in _error(response, 422, "invalid_request")


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/v1/adapters/base/load", None),
    ("POST", "/v1/adapters/base/unload", None),
    ("POST", "/v1/aliases/production", {"adapter": "base"}),
    ("POST", "/v1/aliases/base", {"adapter": "base"}),
])
def test_admin_routes_refuse_the_base_model_with_400(api, method, path, body):
    response = httpx.request(method, f"{api}{path}", json=body, headers=ADMIN)
    assert "base model" in _error(response, 400, "base_model_not_adapter")


def test_admin_routes_refuse_impossible_targets(api, trained_adapter):
    _error(httpx.post(f"{api}/v1/adapters/lora-nope/unload", headers=ADMIN), 404,
           "adapter_not_found")
    _error(httpx.post(f"{api}/v1/aliases/Bad", headers=ADMIN,
                      json={"adapter": trained_adapter.name}), 422, "invalid_request")
    _error(httpx.post(f"{api}/v1/adapters/{'a' * 129}/load", headers=ADMIN), 422,
           "invalid_request")


def test_metrics_count_requests_and_labels(api):
    # This test makes every event it looks for (it used to rely on an earlier test's
    # 404 for the error counter, and failed when run alone or in another order).
    httpx.post(f"{api}/v1/classify", headers=ADMIN, json={"article": ACQ}, timeout=120)
    httpx.post(f"{api}/v1/classify", headers=ADMIN, json={"article": ACQ, "adapter": "lora-missing"}, timeout=120)
    text = httpx.get(f"{api}/metrics").text
    assert 'signals_classify_requests_total{outcome="ok"}' in text
    assert 'signals_classified_articles_total{adapter="base",label=' in text
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


# --- admin routes, aliases, mixed batches, eviction, the registry watcher -----------

def test_admin_routes_need_the_bearer_token(api, trained_adapter):
    route = f"{api}/v1/adapters/{trained_adapter.name}/load"
    assert "Bearer" in _error(httpx.post(route), 401, "unauthorized")
    _error(httpx.post(route, headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
    _error(httpx.post(route, headers={"Authorization": TOKEN}), 401, "unauthorized")
    _error(httpx.post(f"{api}/v1/aliases/production", json={"adapter": trained_adapter.name}),
           401, "unauthorized")
    assert httpx.post(route, headers=ADMIN).status_code == 200


def test_admin_routes_are_disabled_without_a_token(base_model_dir, registry_dir, tokenizer):
    from pipeline.prompt import label_token_ids

    classifier = build_classifier(InProcessBackend(base_model_dir, label_token_ids(tokenizer)),
                                  base_model_dir, registry_dir, 512, 0.5)
    with serve_app(create_app(classifier, watch_interval_s=None)) as url:
        response = httpx.post(f"{url}/v1/adapters/x/load", headers=ADMIN)
        assert "SIGNALS_SERVE_ADMIN_TOKEN" in _error(response, 403, "admin_disabled")


def test_promote_by_alias_and_unload(api, trained_adapter, registry_dir):
    from classify.registry import AdapterRegistry

    response = httpx.post(f"{api}/v1/aliases/candidate", headers=ADMIN, timeout=60,
                          json={"adapter": trained_adapter.name})
    assert response.json() == {"alias": "candidate", "adapter": trained_adapter.name}
    assert AdapterRegistry(registry_dir).aliases()["candidate"] == trained_adapter.name
    (result,) = httpx.post(f"{api}/v1/classify", headers=ADMIN, timeout=60,
                           json={"article": ACQ, "adapter": "candidate"}).json()["results"]
    assert result["adapter"] == trained_adapter.name  # the version behind the alias
    assert result["requested"] == "candidate"
    _error(httpx.post(f"{api}/v1/aliases/Bad%20Alias", headers=ADMIN,
                      json={"adapter": trained_adapter.name}), 422, "invalid_request")
    _error(httpx.post(f"{api}/v1/aliases/candidate", headers=ADMIN,
                      json={"adapter": "lora-nope"}), 404, "adapter_not_found")
    unloaded = httpx.post(f"{api}/v1/adapters/{trained_adapter.name}/unload", headers=ADMIN, timeout=120)
    assert unloaded.json() == {"name": trained_adapter.name, "loaded": False}
    assert trained_adapter.name not in httpx.get(f"{api}/v1/adapters").json()["loaded"]


def test_mixed_batch_matches_single_adapter_requests(api, trained_adapter):
    items = [{"article": ACQ}, {"article": ACQ, "adapter": trained_adapter.name},
             {"article": EARN, "adapter": "base"}, {"article": EARN,
                                                    "adapter": trained_adapter.name}]
    mixed = httpx.post(f"{api}/v1/classify", headers=ADMIN, json={"items": items}, timeout=60)
    assert mixed.status_code == 200, mixed.text
    mixed = mixed.json()["results"]
    assert [r["adapter"] for r in mixed] == ["base", trained_adapter.name, "base",
                                             trained_adapter.name]
    for item, result in zip(items, mixed):
        alone = httpx.post(f"{api}/v1/classify", headers=ADMIN, timeout=60, json={
            "article": item["article"], "adapter": item.get("adapter")}).json()["results"][0]
        assert result["p_signal"] == pytest.approx(alone["p_signal"], abs=1e-4)


def test_least_recently_used_adapter_is_evicted(base_model_dir, registry_dir, tokenizer,
                                                trained_adapter):
    import asyncio

    from pipeline.prompt import label_token_ids
    from tests.conftest import publish_variant

    other = publish_variant(registry_dir, trained_adapter, "evict", scale=-1.0)
    classifier = build_classifier(InProcessBackend(base_model_dir, label_token_ids(tokenizer)),
                                  base_model_dir, registry_dir, 512, 0.5, max_loaded=1)

    async def scenario():
        await classifier.ensure_loaded(trained_adapter.name)
        first = (await classifier.classify([_article()], trained_adapter.name))[0].p_signal
        await classifier.ensure_loaded(other.name)
        assert list(classifier.loaded) == [other.name]
        assert (await classifier.classify([_article()], other.name))[0].p_signal != first
        # the evicted one comes back on demand, with the same answer
        again = (await classifier.classify([_article()], trained_adapter.name))[0].p_signal
        assert again == pytest.approx(first, abs=1e-5)
        assert list(classifier.loaded) == [trained_adapter.name]

    asyncio.run(scenario())


def _article():
    from pipeline.article import Article

    return Article(**ACQ)


def test_watcher_loads_new_versions_and_follows_aliases(base_model_dir, registry_dir,
                                                        tokenizer, trained_adapter):
    import time

    from pipeline.prompt import label_token_ids
    from tests.conftest import publish_variant
    from classify.registry import AdapterRegistry

    classifier = build_classifier(InProcessBackend(base_model_dir, label_token_ids(tokenizer)),
                                  base_model_dir, registry_dir, 512, 0.5, max_loaded=8)
    with serve_app(create_app(classifier, watch_interval_s=0.3)) as url:
        wait_until_ok(f"{url}/ready", 120)
        fresh = publish_variant(registry_dir, trained_adapter, "watched", scale=0.5)
        deadline = time.monotonic() + 20
        while fresh.name not in httpx.get(f"{url}/v1/adapters").json()["loaded"]:
            assert time.monotonic() < deadline, "new version not picked up"
            time.sleep(0.2)
        refused = httpx.post(f"{url}/v1/adapters/{fresh.name}/unload")  # no token
        _error(refused, 403, "admin_disabled")  # this app has no admin token
        assert fresh.name in httpx.get(f"{url}/v1/adapters").json()["loaded"]
        AdapterRegistry(registry_dir).set_alias("production", trained_adapter.name)
        while trained_adapter.name not in httpx.get(f"{url}/v1/adapters").json()["loaded"]:
            assert time.monotonic() < deadline, "alias change not followed"
            time.sleep(0.2)
        metrics = httpx.get(f"{url}/metrics").text
        assert 'signals_adapter_loads_total{trigger="watcher"}' in metrics


# --- calibration: one adapter, one behaviour ---------------------------------------


def _uncalibrated_copy(registry_dir, source):
    """The same adapter weights published as an older version would be: no calibration."""
    import shutil

    from classify.registry import AdapterManifest, AdapterRegistry

    registry = AdapterRegistry(registry_dir)
    name = registry.new_name("lora", "old-manifest")
    staging = registry.staging_dir(name)
    for file in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(source.path / file, staging)
    old = {k: v for k, v in source.manifest.to_json().items() if k != "calibration"}
    return registry.publish(name, AdapterManifest.model_validate(old))


@pytest.fixture(scope="module")
def april_articles(reuters_dataset):
    from pipeline.dataset import load_split

    april = load_split(reuters_dataset, "1987-04")
    # at most the api fixture's max_batch (4) in one request
    return [a for a in april if a.signal == 1][:2] + [a for a in april if a.signal == 0][:2]


def test_served_calibrated_p_and_threshold_equal_evaluation(
        api, trained_adapter, april_articles, base_model_dir, registry_dir):
    from train.evaluate import Scorer

    calibration = trained_adapter.calibration
    assert calibration is not None, "training fits a calibration on the validation window"
    served = httpx.post(f"{api}/v1/classify", headers=ADMIN, timeout=120, json={
        "articles": [a.to_record() for a in april_articles],
        "adapter": trained_adapter.name}).json()["results"]
    evaluation = Scorer(base_model_dir, registry_dir, 512).evaluate(
        april_articles, trained_adapter.name, "1987-04")
    assert evaluation.metrics["threshold"] == calibration.threshold
    assert evaluation.metrics["calibrated"] is True
    for result, p in zip(served, evaluation.p_signal):
        assert result["calibrated"] is True
        assert result["threshold"] == calibration.threshold
        assert result["p_signal"] == pytest.approx(p, abs=1e-5)
        assert result["p_signal"] == pytest.approx(calibration.apply(result["p_raw"]), abs=1e-9)
        assert result["label"] == int(result["p_signal"] >= calibration.threshold)
    # a request's threshold still wins over the adapter's own
    overridden = httpx.post(f"{api}/v1/classify", headers=ADMIN, timeout=120, json={
        "articles": [a.to_record() for a in april_articles[:2]],
        "adapter": trained_adapter.name, "threshold": 0.99}).json()["results"]
    assert all(r["threshold"] == 0.99 and r["calibrated"] for r in overridden)


def test_adapter_without_calibration_serves_uncalibrated_at_the_server_threshold(
        api, trained_adapter, april_articles, registry_dir):
    old = _uncalibrated_copy(registry_dir, trained_adapter)
    assert old.calibration is None
    body = {"articles": [a.to_record() for a in april_articles]}
    raw = httpx.post(f"{api}/v1/classify", headers=ADMIN, timeout=120,
                     json={**body, "adapter": old.name}).json()["results"]
    calibrated = httpx.post(f"{api}/v1/classify", headers=ADMIN, timeout=120,
                            json={**body, "adapter": trained_adapter.name}).json()["results"]
    for r, c in zip(raw, calibrated):
        assert r["calibrated"] is False and r["threshold"] == 0.5
        assert r["p_signal"] == r["p_raw"]
        # same weights: the calibrated version's raw P is the old version's answer
        assert c["p_raw"] == pytest.approx(r["p_signal"], abs=1e-5)
    base = httpx.post(f"{api}/v1/classify", headers=ADMIN, json=body, timeout=120).json()["results"]
    assert all(r["calibrated"] is False and r["threshold"] == 0.5 for r in base)


def test_signal_rate_prior_shifts_a_calibrated_version_and_never_the_base(api, trained_adapter):
    """Label shift when asked: the calibrated P moves to the given rate by Bayes' rule,
    the label is cut at the version's own threshold on the shifted P; the base model is
    not shifted; 'estimate' on fewer than 30 articles is a 422 with a message. The
    fixture adapter's manifest has none of the ensemble fields (an older version)."""
    from classify.calibration import prior_shift

    manifest = json.loads((trained_adapter.path / "manifest.json").read_text())
    assert "ensemble" not in manifest and "ensemble_of" not in manifest
    calibration = trained_adapter.calibration
    body = {"articles": [ACQ, EARN], "adapter": trained_adapter.name}
    plain = httpx.post(f"{api}/v1/classify", headers=ADMIN, json=body, timeout=120).json()["results"]
    shifted = httpx.post(f"{api}/v1/classify", headers=ADMIN, json={**body, "signal_rate": 0.45},
                         timeout=120).json()["results"]
    for p, s in zip(plain, shifted):
        assert p["signal_rate"] is None and s["signal_rate"] == 0.45
        assert s["p_signal"] == pytest.approx(
            prior_shift(p["p_signal"], calibration.fitted_on.base_rate, 0.45), abs=1e-6)
        assert s["p_signal"] > p["p_signal"]  # 0.45 is above any fitting window's rate here
        assert s["threshold"] == calibration.threshold
        assert s["label"] == int(s["p_signal"] >= s["threshold"])
    base = httpx.post(f"{api}/v1/classify", headers=ADMIN, json={"articles": [ACQ], "signal_rate": 0.45},
                      timeout=120).json()["results"][0]
    assert base["signal_rate"] is None and base["calibrated"] is False
    _error(httpx.post(f"{api}/v1/classify", headers=ADMIN, json={**body, "signal_rate": "estimate"},
                      timeout=120), 422, "signal_rate_not_estimable")
    for bad in (0.0, 1.0, "guess"):
        assert httpx.post(f"{api}/v1/classify", headers=ADMIN, json={**body, "signal_rate": bad},
                          timeout=120).status_code == 422


def _copy_with_calibration_dtype(registry_dir, source, dtype):
    """The same adapter and calibration, published as fitted in ``dtype`` (None: as a
    version from before the dtype was recorded)."""
    import shutil

    from classify.registry import AdapterManifest, AdapterRegistry

    registry = AdapterRegistry(registry_dir)
    name = registry.new_name("lora", f"dtype-{dtype}")
    staging = registry.staging_dir(name)
    for file in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(source.path / file, staging)
    manifest = source.manifest.to_json()
    if dtype is None:
        manifest["calibration"].pop("dtype", None)
    else:
        manifest["calibration"]["dtype"] = dtype
    return registry.publish(name, AdapterManifest.model_validate(manifest))


def test_a_version_calibrated_in_another_dtype_than_served_is_flagged(
        api, trained_adapter, registry_dir, april_articles, caplog):
    """Training calibrates in process (float32) and records it; the in-process backend
    serves float32. A version calibrated in bfloat16 is flagged, in GET /v1/adapters and
    in the log when loaded; one without a recorded dtype is unknown and still serves."""
    assert trained_adapter.calibration.dtype == "float32"
    bf16 = _copy_with_calibration_dtype(registry_dir, trained_adapter, "bfloat16")
    unknown = _copy_with_calibration_dtype(registry_dir, trained_adapter, None)
    listing = httpx.get(f"{api}/v1/adapters", headers=ADMIN, timeout=30).json()
    assert listing["served_dtype"] == "float32"
    flags = {a["name"]: a["dtype_mismatch"] for a in listing["adapters"]}
    assert flags[trained_adapter.name] is False
    assert flags[bf16.name] is True
    assert flags[unknown.name] is None
    body = {"articles": [a.to_record() for a in april_articles[:2]]}
    with caplog.at_level("WARNING", logger="classify.classifier"):
        for version in (bf16, unknown):
            response = httpx.post(f"{api}/v1/classify", headers=ADMIN, timeout=120,
                                  json={**body, "adapter": version.name})
            assert response.status_code == 200, response.text
            assert all(r["calibrated"] for r in response.json()["results"])
    warned = [r.getMessage() for r in caplog.records if "calibrated in" in r.getMessage()]
    assert any(bf16.name in m and "bfloat16" in m and "float32" in m for m in warned), warned
    assert not any(unknown.name in m for m in warned)
