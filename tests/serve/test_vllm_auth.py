"""vLLM's API key end to end: a real vLLM server started by ``VLLMServer`` with a key
refuses calls without it (completions and the runtime LoRA routes), and the product's
backend, given the key, classifies and reaches the LoRA routes."""

import asyncio

import httpx
import pytest

from pipeline.article import Article
from pipeline.prompt import label_token_ids
from serve.vllm_server import VLLMServer
from tests.conftest import free_port
from train.backends import AdapterLoadError, BackendUnavailable, VLLMBackend
from train.classifier import build_classifier

KEY = "test-vllm-key"
ARTICLE = Article(id="k", title="Acme agrees takeover by Beta", text="Acme said it agreed.")


@pytest.fixture(scope="module")
def keyed_vllm(base_model_dir, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("vllm-key") / "vllm.log"
    server = VLLMServer(base_model_dir, free_port(), "base", max_loras=1, max_lora_rank=16,
                        log_path=log_path, api_key=KEY)
    server.start()
    try:
        server.wait_healthy(420)  # /health stays open
    except BaseException:
        server.stop()
        print(log_path.read_text()[-5000:])
        raise
    yield server
    server.stop()


def test_vllm_refuses_calls_without_its_key(keyed_vllm):
    body = {"model": "base", "prompt": "hello", "max_tokens": 1}
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        assert httpx.post(f"{keyed_vllm.url}/v1/completions", json=body, headers=headers,
                          timeout=60).status_code == 401
        assert httpx.post(f"{keyed_vllm.url}/v1/unload_lora_adapter", headers=headers,
                          json={"lora_name": "x"}, timeout=60).status_code == 401
    assert httpx.post(f"{keyed_vllm.url}/v1/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_the_backend_sends_the_key(keyed_vllm, base_model_dir, registry_dir, tokenizer):
    labels = label_token_ids(tokenizer)

    async def scenario(api_key):
        backend = VLLMBackend(keyed_vllm.url, "base", labels, timeout_s=120, api_key=api_key)
        classifier = build_classifier(backend, base_model_dir, registry_dir, 512, 0.5)
        try:
            (result,) = await classifier.classify([ARTICLE])
            # The LoRA admin route: an adapter never loaded is a 404 to the keyed caller,
            # which the backend accepts; a 401 would raise.
            await backend.unload_adapter("never-loaded")
            return result
        finally:
            await backend.close()

    result = asyncio.run(scenario(KEY))
    assert 0.0 <= result.p_signal <= 1.0
    with pytest.raises(BackendUnavailable, match="401"):
        asyncio.run(scenario(None))

    async def unload_without_key():
        backend = VLLMBackend(keyed_vllm.url, "base", labels, timeout_s=120)
        try:
            await backend.unload_adapter("never-loaded")
        finally:
            await backend.close()

    with pytest.raises(AdapterLoadError, match="401"):
        asyncio.run(unload_without_key())
