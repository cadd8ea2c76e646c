"""LoRA supervised fine-tuning for the signal task: config -> load -> fit -> save.

Each example is the article's prompt from :func:`pipeline.prompt.encode_prompt` followed
by the label token and EOS; only those two answer tokens carry loss (TRL's
``completion_only_loss`` on a pre-tokenised ``completion_mask``), so the model learns
to answer, not to write newswire. The adapter is published to the registry with a
manifest; nothing half-written is ever visible there.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.article import Article
from pipeline.dataset import load_split, read_manifest
from pipeline.prompt import encode_prompt, label_token_ids
from train.config import LoraTrainConfig
from train.registry import AdapterRegistry, AdapterVersion

log = logging.getLogger(__name__)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def select_examples(articles: list[Article], config: LoraTrainConfig) -> list[Article]:
    """The bounded, labelled slice of the split that this run trains on."""
    labelled = [a for a in articles if a.signal is not None]
    rng = random.Random(config.seed)
    if config.max_examples is None or config.max_examples >= len(labelled):
        chosen = labelled
    elif config.sampling == "balanced":
        signals = [a for a in labelled if a.signal == 1]
        others = [a for a in labelled if a.signal == 0]
        half = config.max_examples // 2
        n_signals = min(half, len(signals))
        chosen = rng.sample(signals, n_signals) + rng.sample(
            others, min(config.max_examples - n_signals, len(others)))
    else:
        chosen = rng.sample(labelled, config.max_examples)
    chosen = list(chosen)
    rng.shuffle(chosen)
    return chosen


def sft_records(articles: list[Article], tokenizer, max_prompt_tokens: int) -> list[dict]:
    """Pre-tokenised SFT rows: prompt ids + [label, EOS], loss only on the last two."""
    labels = label_token_ids(tokenizer)
    rows = []
    for article in articles:
        prompt = encode_prompt(article, tokenizer, max_prompt_tokens)
        answer = [labels.signal if article.signal == 1 else labels.not_signal,
                  tokenizer.eos_token_id]
        rows.append({
            "input_ids": prompt.token_ids + answer,
            "completion_mask": [0] * len(prompt.token_ids) + [1] * len(answer),
        })
    return rows


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def train_lora(config: LoraTrainConfig) -> AdapterVersion:
    """Train one LoRA adapter as configured and publish it to the registry."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    started = time.monotonic()
    torch.manual_seed(config.seed)

    # --- load ---------------------------------------------------------------
    dataset_manifest = read_manifest(config.dataset)
    articles = load_split(config.dataset, config.split)
    examples = select_examples(articles, config)
    if not examples:
        raise ValueError(f"split {config.split!r} of {config.dataset} has no labelled articles")
    tokenizer = AutoTokenizer.from_pretrained(config.base_model)
    rows = sft_records(examples, tokenizer, config.max_prompt_tokens)
    train_dataset = Dataset.from_list(rows)
    tokens_per_epoch = sum(len(r["input_ids"]) for r in rows)
    n_signals = sum(a.signal for a in examples)
    log.info("training on %d examples (%d signals) from %s/%s, %d tokens",
             len(examples), n_signals, config.dataset.name, config.split, tokens_per_epoch)

    model = AutoModelForCausalLM.from_pretrained(config.base_model, dtype=torch.float32)
    peft_config = LoraConfig(
        r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
        target_modules=config.target_modules, task_type="CAUSAL_LM")

    # --- fit ----------------------------------------------------------------
    registry = AdapterRegistry(config.registry)
    name = registry.new_name(config.method, f"{config.dataset.name}-{config.split}")
    staging = registry.staging_dir(name)
    args = SFTConfig(
        output_dir=str(staging / "trainer"),
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        lr_scheduler_type="linear",
        warmup_steps=0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=config.seed,
        use_cpu=not torch.cuda.is_available(),
        bf16=config.bf16,
        completion_only_loss=True,
        max_length=None,  # prompts are already cut by encode_prompt
        dataloader_num_workers=0,
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=train_dataset,
        processing_class=tokenizer, peft_config=peft_config)
    result = trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]

    # --- save ---------------------------------------------------------------
    trainer.model.save_pretrained(staging)
    shutil.rmtree(staging / "trainer", ignore_errors=True)
    split_info = dataset_manifest["splits"][config.split]
    wall_time = time.monotonic() - started
    manifest: dict[str, Any] = {
        "method": config.method,
        "base_model": str(config.base_model.resolve()),
        "base_model_name": config.base_model.name,
        "dataset": {
            "name": dataset_manifest.get("name", config.dataset.name),
            "path": str(config.dataset.resolve()),
            "split": config.split,
            "window": [split_info["date_from"], split_info["date_to"]],
            "examples": len(examples),
            "signals": n_signals,
        },
        "hyperparameters": config.model_dump(mode="json"),
        "lora": {"rank": config.rank, "alpha": config.alpha,
                 "target_modules": config.target_modules},
        "metrics": {
            "train_loss": round(result.training_loss, 6),
            "first_loss": round(losses[0], 6) if losses else None,
            "last_loss": round(losses[-1], 6) if losses else None,
            "steps": result.global_step,
            "loss_curve": [round(x, 6) for x in losses],
        },
        "tokens_seen": int(tokens_per_epoch * max(result.global_step * config.batch_size
                                                  / len(rows), 0)),
        "wall_time_s": round(wall_time, 1),
        "git_commit": _git_commit(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    version = registry.publish(name, manifest)
    log.info("published adapter %s (%d steps, loss %.4f -> %.4f, %.0f s)", name,
             result.global_step, losses[0] if losses else float("nan"),
             losses[-1] if losses else float("nan"), wall_time)
    return version
