"""A tiny random llama with the real tokenizer: every training method runs real
steps on it in seconds, and its adapters load like the real ones."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, base_model_dir) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    out = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def tiny_overrides(tiny_model_dir, reuters_dataset, tmp_path) -> list[str]:
    """Config overrides for a few-second run on the tiny model."""
    return [f"base_model={tiny_model_dir}", f"dataset={reuters_dataset}",
            f"registry={tmp_path / 'registry'}", "max_examples=8", "sampling=balanced",
            "max_steps=2", "batch_size=4", "max_prompt_tokens=160", "bf16=false",
            "validation_max_examples=16"]
