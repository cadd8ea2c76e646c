"""How a method runs its TRL trainer: directly or as a Ray Train worker (``RunContext``),
the arguments every TRL config takes the same way, one progress bar with the loss, and
the loss curve the manifest keeps."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from classify.registry import AdapterRegistry
from train.config import TrainConfig
from train.model import use_bf16


@dataclass
class RunContext:
    """How a method is being run: directly, or as one Ray Train worker.

    Under Ray Train the trainer checkpoints every ``save_steps`` into ``output_dir``
    (Ray's report callback hands each checkpoint to Ray), resumes from
    ``resume_from_checkpoint`` after a worker failure, and only rank 0 publishes.
    """

    callbacks: list[Any] = field(default_factory=list)
    resume_from_checkpoint: str | None = None
    resumed_from_step: int | None = None
    save_steps: int | None = None
    output_dir: Path | None = None
    adapter_name: str | None = None
    """Registry name to publish under (chosen by the job before it starts)."""

    def name_in(self, registry: AdapterRegistry, config: TrainConfig) -> str:
        return self.adapter_name or registry.new_name(
            config.method, f"{config.dataset.name}-{config.split}")


def trainer_arguments(config: TrainConfig, context: RunContext, staging: Path) -> dict[str, Any]:
    """Arguments every TRL config takes the same way here."""
    import torch

    checkpointing = context.save_steps is not None
    return dict(
        output_dir=str(context.output_dir or staging / "trainer"),
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        lr_scheduler_type="linear",
        warmup_steps=0,
        logging_steps=1,
        save_strategy="steps" if checkpointing else "no",
        save_steps=context.save_steps or 500,
        report_to=[],
        seed=config.seed,
        use_cpu=not torch.cuda.is_available(),
        bf16=use_bf16(config),
        dataloader_num_workers=0,
        gradient_checkpointing=config.gradient_checkpointing,
        # LoRA touches every forward; DDP's unused-parameter scan is pure overhead.
        ddp_find_unused_parameters=False,
    )


def show_loss_progress(trainer, description: str, key: str = "loss") -> None:
    """Replace the trainer's console output (a bare step bar plus one printed dict per
    logged step) with one progress bar over the optimiser steps that shows the loss (or
    the logged value ``key``: an RL policy's ``reward``)."""
    from tqdm.auto import tqdm
    from transformers.trainer_callback import PrinterCallback, ProgressCallback, TrainerCallback

    class LossProgressBar(TrainerCallback):
        def __init__(self):
            self.bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.bar = tqdm(total=state.max_steps, initial=state.global_step,
                                desc=description, unit="step", dynamic_ncols=True)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.bar is not None and logs and key in logs:
                self.bar.set_postfix({key: f"{logs[key]:.4f}"})

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(LossProgressBar())


def loss_curve(log_history: list[dict[str, Any]], key: str = "loss") -> list[float]:
    return [round(float(e[key]), 6) for e in log_history if key in e]
