"""The model a training run starts from: the tokenizer, the base model (float32, or NF4
for QLoRA), a fresh LoRA or the ``init_adapter`` it continues, and whether it computes
in bfloat16."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from classify.backends import native_bf16
from classify.manifest import AdapterManifest
from classify.registry import MANIFEST, AdapterNotFound, AdapterRegistry
from train.config import TrainConfig

log = logging.getLogger(__name__)


def load_tokenizer(base_model: Path):
    from transformers import AutoTokenizer

    # Left padding: generation (RL) and last-position scoring both need it; it must be
    # given to the constructor to survive save_pretrained (transformers 5.19).
    tokenizer = AutoTokenizer.from_pretrained(base_model, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(config: TrainConfig, sequence_classification: bool = False):
    """The base model in float32, or 4-bit NF4 for QLoRA; a 1-output head for rewards."""
    import torch
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification,
                              BitsAndBytesConfig)

    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if config.load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16 if use_bf16(config) else torch.float32)
    if sequence_classification:
        model = AutoModelForSequenceClassification.from_pretrained(
            config.base_model, num_labels=1, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(config.base_model, **kwargs)
    if config.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        # No forward pass may run before LoRA is attached (STACK.md: bitsandbytes repacks
        # the weights and LoRA then gets no gradients).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model


def lora_config(config: TrainConfig, task_type: str = "CAUSAL_LM", **extra):
    from peft import LoraConfig

    return LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=config.target_modules, task_type=task_type, **extra)


def resolve_adapter(reference: str, registry: Path) -> Path:
    """An adapter given as a registry name/alias or as a directory."""
    path = Path(reference)
    if (path / "adapter_config.json").is_file():
        return path
    try:
        return AdapterRegistry(registry).resolve(reference).path
    except AdapterNotFound:
        raise ValueError(f"init_adapter: {reference!r} is neither an adapter directory nor "
                         f"a version or alias in the registry {registry}") from None


def pin_init_adapter(config: TrainConfig) -> TrainConfig:
    """``config`` with an ``init_adapter`` given as a registry alias replaced by the
    version the alias names now: every worker, and the manifest, read that one version,
    even if the alias moves while the run trains (the promotion gate may move it).

    A continued adapter keeps its own LoRA shape (``PeftModel.from_pretrained`` loads
    it), so the config takes the rank, alpha and target modules from its
    ``adapter_config.json``: the manifest then records the shape the new version has,
    not the one the config file names (``update.yaml`` continuing a production adapter
    trained with another ``target_modules``)."""
    if not config.init_adapter:
        return config
    path = resolve_adapter(config.init_adapter, config.registry)
    update = {}
    if not (Path(config.init_adapter) / "adapter_config.json").is_file():
        if path.name != config.init_adapter:
            log.info("init_adapter %s is version %s", config.init_adapter, path.name)
        update["init_adapter"] = path.name
    from peft import LoraConfig

    shape = LoraConfig.from_pretrained(str(path))
    modules = shape.target_modules
    own = {"rank": shape.r, "alpha": shape.lora_alpha,
           "target_modules": sorted([modules] if isinstance(modules, str) else modules)}
    mine = {"rank": config.rank, "alpha": config.alpha,
            "target_modules": sorted(config.target_modules)}
    if own != mine:
        log.info("init_adapter %s has LoRA rank %d, alpha %d on %s: continuing with its shape",
                 path.name, own["rank"], own["alpha"], ",".join(own["target_modules"]))
        update.update(own)
    return config.model_copy(update=update) if update else config


def check_prompt_style(adapter_dir: Path, config: TrainConfig) -> None:
    """Refuse to continue an adapter with another instruction than it was trained with:
    its prompts would change under it. A directory without a manifest is taken as
    ``full`` (what every version before ``prompt_style`` was trained with)."""
    manifest_file = adapter_dir / MANIFEST
    style = "full"
    if manifest_file.is_file():
        raw = json.loads(manifest_file.read_text(encoding="utf-8"))
        style = AdapterManifest.parse(raw, adapter_dir.name).hyperparameters.prompt_style or "full"
    if style != config.prompt_style:
        raise ValueError(f"init_adapter {adapter_dir.name} was trained with prompt_style "
                         f"{style!r}; set prompt_style: {style} (this run has "
                         f"{config.prompt_style!r})")


def peft_model(config: TrainConfig, model):
    """Attach a fresh LoRA, or the ``init_adapter`` to continue training, to ``model``."""
    from peft import PeftModel, get_peft_model

    if config.init_adapter:
        path = resolve_adapter(config.init_adapter, config.registry)
        log.info("starting from adapter %s", path)
        return PeftModel.from_pretrained(model, str(path), is_trainable=True)
    return get_peft_model(model, lora_config(config))


def use_bf16(config: TrainConfig) -> bool:
    """The config's ``bf16``, with None resolved by :func:`native_bf16`."""
    return native_bf16() if config.bf16 is None else config.bf16
