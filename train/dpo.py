"""DPO for the signal task: prefer the true label's answer over the other one.

Rafailov et al. (2023), "Direct Preference Optimization" (arXiv:2305.18290). Each
article is a preference pair: prompt = :func:`pipeline.prompt.encode_prompt`'s text,
chosen = the true label token, rejected = the other (``pipeline.views.preference_rows``).
TRL's ``DPOTrainer`` trains a LoRA adapter; the reference model is the starting point:
the base model (adapter disabled), or, with ``init_adapter``, a frozen copy of that SFT
adapter (TRL loads it as the ``ref`` adapter).
"""

from __future__ import annotations

import logging

from train.data import mean_prompt_tokens, preference_pairs
from train.model import load_base_model, peft_model
from train.trainer import RunContext, loss_curve, show_loss_progress, trainer_arguments
from train.config import DpoTrainConfig
from classify.registry import AdapterVersion
from train.run import start_run

log = logging.getLogger(__name__)


def train_dpo(config: DpoTrainConfig, context: RunContext | None = None) -> AdapterVersion | None:
    """Train one DPO adapter as configured; publish it (rank 0) and return its version."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    # --- load ---------------------------------------------------------------
    run = start_run(config, context)
    tokenizer = run.tokenizer
    rows = preference_pairs(run.data, tokenizer, config)
    model = peft_model(config, load_base_model(config))

    # --- fit ----------------------------------------------------------------
    args = DPOConfig(**trainer_arguments(config, run.context, run.staging), beta=config.beta,
                     loss_type=list(config.loss_type), loss_weights=config.loss_weights,
                     max_length=None)  # prompts are already cut by encode_prompt
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, callbacks=run.context.callbacks)
    show_loss_progress(trainer, "dpo training")
    result = trainer.train(resume_from_checkpoint=run.context.resume_from_checkpoint)
    if not trainer.is_world_process_zero():
        return None

    # --- save ---------------------------------------------------------------
    history = trainer.state.log_history
    losses = loss_curve(history)
    # Only the trained adapter: the frozen "ref" copy TRL may add is not part of it.
    trainer.model.save_pretrained(run.staging, selected_adapters=["default"])
    metrics = {
        "train_loss": round(result.training_loss, 6),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "steps": result.global_step,
        "loss_curve": losses,
        "reward_accuracy_curve": loss_curve(history, "rewards/accuracies"),
        "reward_margin_curve": loss_curve(history, "rewards/margins"),
    }
    seen = 2 * mean_prompt_tokens(rows, tokenizer) * result.global_step * config.batch_size
    return run.publish(metrics, seen)
