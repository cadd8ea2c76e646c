"""LoRA supervised fine-tuning for the signal task: config -> load -> fit -> save.

Each example is the article's prompt from :func:`pipeline.prompt.encode_prompt` followed
by the label token and EOS; only those two answer tokens carry loss (TRL's
``completion_only_loss`` on a pre-tokenised ``completion_mask``), so the model learns
to answer, not to write newswire. ``qlora`` is the same on a 4-bit base;
:mod:`train.loraplus` passes its own optimiser. The adapter is published to the
registry with a manifest; nothing half-written is ever visible there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pipeline.views import sft_token_rows
from train.model import load_base_model, peft_model
from train.trainer import RunContext, loss_curve, show_loss_progress, trainer_arguments
from train.config import TrainConfig
from classify.registry import AdapterVersion
from train.run import start_run

log = logging.getLogger(__name__)

# Builds the optimiser for the wrapped model (LoRA+ does); None = the trainer's AdamW.
OptimizerFactory = Callable[[Any, TrainConfig], Any]


def train_lora(config: TrainConfig, context: RunContext | None = None,
               optimizer_factory: OptimizerFactory | None = None) -> AdapterVersion | None:
    """Train one SFT adapter as configured; publish it (rank 0) and return its version."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    # --- load ---------------------------------------------------------------
    run = start_run(config, context)
    tokenizer = run.tokenizer
    rows = sft_token_rows(run.data.examples, tokenizer, config.max_prompt_tokens,
                          config.prompt_style)
    tokens_per_epoch = sum(len(r["input_ids"]) for r in rows)
    # LoRA is attached here, before any forward pass (a 4-bit base needs that order).
    model = peft_model(config, load_base_model(config))

    # --- fit ----------------------------------------------------------------
    args = SFTConfig(**trainer_arguments(config, run.context, run.staging),
                     completion_only_loss=True,
                     max_length=None)  # prompts are already cut by encode_prompt
    optimizers = (optimizer_factory(model, config), None) if optimizer_factory else (None, None)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, optimizers=optimizers,
                         callbacks=run.context.callbacks)
    show_loss_progress(trainer, f"{config.method} training")
    result = trainer.train(resume_from_checkpoint=run.context.resume_from_checkpoint)
    if not trainer.is_world_process_zero():
        return None

    # --- save ---------------------------------------------------------------
    losses = loss_curve(trainer.state.log_history)
    trainer.model.save_pretrained(run.staging)
    metrics = {
        "train_loss": round(result.training_loss, 6),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "steps": result.global_step,
        "world_size": trainer.args.world_size,
        "loss_curve": losses,
    }
    seen = tokens_per_epoch * result.global_step * config.batch_size * max(
        trainer.args.world_size, 1) / len(rows)
    return run.publish(metrics, seen)
