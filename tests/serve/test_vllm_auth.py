"""vLLM's API key end to end: a real vLLM server started by ``VLLMServer`` with a key
refuses calls without it (completions and the runtime LoRA routes), and the product's
backend, given the key, classifies and reaches the LoRA routes. With the session's vLLM
beside it, the two are the replicas of one deployment: adapter loads and unloads reach
both."""

import asyncio

import httpx
import pytest

from pipeline.article import Article
from pipeline.prompt import encode_prompt, label_token_ids
from serve.vllm_server import VLLMServer
from tests.conftest import free_port, publish_variant
from classify.backends import AdapterLoadError, BackendUnavailable, VLLMBackend, resolve_replicas
from classify.classifier import build_classifier

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


def test_loads_and_unloads_reach_every_replica(keyed_vllm, vllm_server, trained_adapter,
                                               base_model_dir, registry_dir, tokenizer):
    """Two real vLLM servers as the replicas of one deployment (the session's, which takes
    no key and ignores the header, and the keyed one): a load through the classifier
    makes both serve the adapter with the same P(signal), an unload removes it from
    both, and with a third replica down the unload still reaches the live two and the
    error names the dead one."""
    labels = label_token_ids(tokenizer)
    replicas = [vllm_server.url, keyed_vllm.url]
    # A version of its own: the session's vLLM may still serve trained_adapter from an
    # earlier test on this worker, and the test starts from "loaded on neither".
    name = publish_variant(registry_dir, trained_adapter, "replicas").name
    auth = {"Authorization": f"Bearer {KEY}"}

    async def served(client: httpx.AsyncClient) -> dict[str, set[str]]:
        answers = await asyncio.gather(*(client.get(f"{url}/v1/models", headers=auth)
                                         for url in replicas))
        return {url: {m["id"] for m in a.json()["data"]} for url, a in zip(replicas, answers)}

    async def p_on(url: str, prompt: list[int]) -> float:
        replica = VLLMBackend(url, "base", labels, timeout_s=120, api_key=KEY)
        try:
            (p,) = await replica.signal_probabilities([prompt], [name])
            return p
        finally:
            await replica.close()

    async def scenario():
        backend = VLLMBackend(keyed_vllm.url, "base", labels, timeout_s=120, api_key=KEY,
                              replicas=replicas)
        classifier = build_classifier(backend, base_model_dir, registry_dir, 512, 0.5)
        async with httpx.AsyncClient(timeout=60) as client:
            try:
                before = await served(client)
                (result,) = await classifier.classify([ARTICLE], adapter=name)
                loaded = await served(client)
                prompt = encode_prompt(ARTICLE, classifier.tokenizer,
                                       classifier.prompt_limit(classifier.resolve(name)))
                per_replica = [await p_on(url, prompt.token_ids) for url in replicas]
                await classifier.unload(name)
                unloaded = await served(client)

                await classifier.ensure_loaded(name)
                dead = f"http://127.0.0.1:{free_port()}"
                backend.replicas = [*replicas, dead]
                with pytest.raises(BackendUnavailable) as failure:
                    await classifier.unload(name)
                after_partial = await served(client)
                return (before, result, loaded, per_replica, unloaded, failure.value,
                        dead, after_partial)
            finally:
                await backend.close()

    (before, result, loaded, per_replica, unloaded, failure, dead,
     after_partial) = asyncio.run(scenario())
    assert all(name not in models for models in before.values())
    assert all(name in models for models in loaded.values()), loaded
    assert result.adapter == name
    # Both replicas answer with the adapter, and alike (float32, same weights).
    assert per_replica[0] == pytest.approx(per_replica[1], abs=1e-4)
    assert per_replica[0] == pytest.approx(result.p_raw, abs=1e-4)
    assert all(name not in models for models in unloaded.values()), unloaded
    assert str(failure).startswith("1 of 3 vLLM replicas failed") and dead in str(failure)
    assert all(name not in models for models in after_partial.values()), after_partial


def test_replicas_come_from_every_address_of_a_name():
    """A headless Service's name resolves to one address per replica; here the real
    resolver on ``localhost`` (from /etc/hosts)."""
    urls = asyncio.run(resolve_replicas("http://localhost:8000"))
    assert "http://127.0.0.1:8000" in urls
    assert all(url.endswith(":8000") for url in urls)
    assert asyncio.run(resolve_replicas("http://10.1.2.3:8000")) == ["http://10.1.2.3:8000"]


def test_a_replica_name_that_does_not_resolve_is_a_clear_unavailable_error():
    """A wrong SIGNALS_SERVE_VLLM_REPLICAS: the admin call fails naming the URL and the
    resolver's reason (503 at the API), instead of silently reaching no replica."""
    async def unload():
        backend = VLLMBackend("http://127.0.0.1:9", "base", None,
                              replicas="http://no-such-host.invalid:8000")
        try:
            await backend.unload_adapter("x")
        finally:
            await backend.close()

    with pytest.raises(BackendUnavailable, match="cannot resolve the vLLM replicas at "
                                                 "http://no-such-host.invalid:8000"):
        asyncio.run(unload())
