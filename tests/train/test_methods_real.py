"""Each method on the real base model (SmolLM2-135M, a step or two): the adapters it
publishes load into the real vLLM server and answer there as they do in-process."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.dataset import load_split
from pipeline.prompt import label_token_ids
from classify.backends import InProcessBackend, VLLMBackend
from classify.classifier import build_classifier
from train.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


@pytest.fixture(scope="module")
def method_adapters(base_model_dir, reuters_dataset, registry_dir, trained_adapter):
    from train.jobs import method_function

    common = [f"base_model={base_model_dir}", f"dataset={reuters_dataset}",
              f"registry={registry_dir}", "max_examples=4", "sampling=balanced",
              "batch_size=2", "max_prompt_tokens=160", "max_steps=1",
              "validation_max_examples=16"]
    runs = {
        "loraplus": [],
        "qlora": [],
        "dpo": [f"init_adapter={trained_adapter.name}", "learning_rate=1e-3"],
        "rlhf": [f"init_adapter={trained_adapter.name}", "num_generations=2",
                 "reward_steps=1", "learning_rate=1e-3"],
    }
    versions = {}
    for method, extra in runs.items():
        config = load_config(None, common + [f"method={method}"] + extra)
        versions[method] = method_function(method)(config)
    return versions


def test_every_method_serves_on_vllm_as_in_process(method_adapters, vllm_server, base_model_dir,
                                                  registry_dir, tokenizer, reuters_dataset):
    articles = load_split(reuters_dataset, "1987-04")[:4]
    labels = label_token_ids(tokenizer)

    async def probabilities(backend) -> dict[str, list[float]]:
        classifier = build_classifier(backend, base_model_dir, registry_dir, 512, 0.5,
                                      max_loaded=2)
        out = {}
        for method, version in method_adapters.items():
            results = await classifier.classify(articles, version.name)
            assert {r.adapter for r in results} == {version.name}
            # raw P: the backends' numbers (a steep calibration fitted on 16 articles
            # would magnify their gap); the calibration itself is the same on both
            out[method] = [r.p_raw for r in results]
        return out

    served = asyncio.run(probabilities(VLLMBackend(vllm_server.url, "base", labels, 120)))
    local = asyncio.run(probabilities(InProcessBackend(base_model_dir, labels)))
    for method in method_adapters:
        assert served[method] == pytest.approx(local[method], abs=2e-3), method
    assert method_adapters["rlhf"].manifest.metrics.reward_model["steps"] == 1
    assert method_adapters["qlora"].manifest.hyperparameters.load_in_4bit is True
