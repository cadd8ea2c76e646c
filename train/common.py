"""What every training method shares: the data slice, the base model, the trainer
arguments, and publishing the finished adapter to the registry with its manifest.

A method module (``lora``, ``loraplus``, ``dpo``, ``rlhf``) reads top to bottom as
config -> load -> fit -> save and calls these helpers for the parts that are the same.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pipeline.article import Article
from pipeline.dataset import DatasetManifest, labelled_sample, load_split, read_manifest
from classify.backends import native_bf16
from train.config import TrainConfig
from train.ensemble import build_ensemble
from classify.manifest import AdapterManifest, DatasetWindow, LoraShape
from classify.registry import MANIFEST, AdapterNotFound, AdapterRegistry, AdapterVersion
from classify.validation import WindowArticles, fit_on_window, raw_p_signal, split_off_validation

log = logging.getLogger(__name__)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


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


@dataclass
class TrainingData:
    """The slice of a dataset split one run trains on, with its provenance, and the
    validation window carved from the split's end (never trained on)."""

    examples: list[Article]
    manifest: DatasetManifest
    split: str
    window: tuple[str, str]
    """First and last publication day the training slice was drawn from."""
    validation: WindowArticles | None = None
    """Where the calibration is fitted after training; None without a window."""

    @property
    def signals(self) -> int:
        return sum(a.signal for a in self.examples)


def select_examples(articles: list[Article], config: TrainConfig) -> list[Article]:
    """The bounded, labelled slice of the split that this run trains on."""
    labelled = [a for a in articles if a.signal is not None]
    rng = random.Random(config.seed)
    if config.max_examples is None or config.max_examples >= len(labelled):
        chosen = labelled
    elif config.sampling == "balanced":
        signals = [a for a in labelled if a.signal == 1]
        others = [a for a in labelled if a.signal == 0]
        n_signals = min(config.max_examples // 2, len(signals))
        chosen = rng.sample(signals, n_signals) + rng.sample(
            others, min(config.max_examples - n_signals, len(others)))
    else:
        chosen = rng.sample(labelled, config.max_examples)
    chosen = list(chosen)
    rng.shuffle(chosen)
    return chosen


def _iso(day: date | None) -> str | None:
    return day.isoformat() if day else None


def load_training_data(config: TrainConfig) -> TrainingData:
    """The training slice and, with ``validation_days``, the validation window carved
    from the end of the split before the slice is drawn."""
    manifest = read_manifest(config.dataset)
    if config.split not in manifest.splits:
        raise ValueError(f"split: {config.split!r} is not a split of {config.dataset} "
                         f"(splits: {', '.join(manifest.splits)})")
    articles = load_split(config.dataset, config.split)
    split_info = manifest.splits[config.split]
    window = (_iso(split_info.date_from), _iso(split_info.date_to))
    validation = None
    if config.validation_days is not None:
        articles, held_out, first, last = split_off_validation(articles, config.validation_days)
        window = (window[0], (first - timedelta(days=1)).isoformat())
        validation = WindowArticles(
            labelled_sample(held_out, config.validation_max_examples, config.seed),
            manifest.name, config.dataset, config.split, first, last)
    examples = select_examples(articles, config)
    if not examples:
        raise ValueError(f"split {config.split!r} of {config.dataset} has no labelled articles")
    data = TrainingData(examples=examples, manifest=manifest, split=config.split,
                        window=window, validation=validation)
    log.info("training on %d examples (%d signals) from %s/%s %s..%s%s", len(examples),
             data.signals, config.dataset.name, config.split, *window,
             f"; validation window {validation.date_from}..{validation.date_to} "
             f"({len(validation.articles)} articles)" if validation else "")
    return data


def preference_pairs(data: TrainingData, tokenizer, config: TrainConfig) -> list[dict[str, str]]:
    """``{prompt, chosen, rejected}`` rows (TRL's preference format) of the training slice."""
    from pipeline.views import preference_rows

    return [{k: r[k] for k in ("prompt", "chosen", "rejected")}
            for r in preference_rows(data.examples, tokenizer, config.max_prompt_tokens,
                                     config.prompt_style)]


def mean_prompt_tokens(rows: list[dict[str, str]], tokenizer) -> float:
    """Average prompt length in tokens (for the manifest's tokens_seen)."""
    return sum(len(tokenizer(r["prompt"], add_special_tokens=False)["input_ids"])
               for r in rows) / len(rows)


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
    even if the alias moves while the run trains (the promotion gate may move it)."""
    if not config.init_adapter or (Path(config.init_adapter) / "adapter_config.json").is_file():
        return config
    version = resolve_adapter(config.init_adapter, config.registry).name
    if version != config.init_adapter:
        log.info("init_adapter %s is version %s", config.init_adapter, version)
    return config.model_copy(update={"init_adapter": version})


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


def git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def publish_adapter(config: TrainConfig, registry: AdapterRegistry, name: str, staging: Path,
                    data: TrainingData, metrics: dict[str, Any], tokens_seen: float,
                    started: float, context: RunContext,
                    extra: dict[str, Any] | None = None) -> AdapterVersion:
    """Fit the calibration on the validation window (when there is one), write the
    manifest and move the staged adapter into the registry (atomic)."""
    shutil.rmtree(staging / "trainer", ignore_errors=True)
    calibration, p_raw = None, None
    if data.validation is not None:
        p_raw = raw_p_signal(config.base_model, staging, data.validation.articles,
                             config.max_prompt_tokens, style=config.prompt_style)
        calibration = fit_on_window(data.validation, p_raw, config.calibration_method)
    manifest = AdapterManifest(
        method=config.method,
        base_model=config.base_model.resolve(),
        base_model_name=config.base_model.name,
        dataset=DatasetWindow(
            name=data.manifest.name,
            path=config.dataset.resolve(),
            version=data.manifest.version or data.manifest.built_at,
            split=data.split,
            window=list(data.window),
            examples=len(data.examples),
            signals=data.signals,
        ),
        hyperparameters=config.model_dump(mode="json"),
        init_adapter=config.init_adapter,  # what an update, DPO or RLHF continued
        lora=LoraShape(rank=config.rank, alpha=config.alpha,
                       target_modules=config.target_modules),
        metrics=metrics,
        tokens_seen=int(tokens_seen),
        wall_time_s=round(time.monotonic() - started, 1),
        resumed_from_step=context.resumed_from_step,
        git_commit=git_commit(),
        created_at=datetime.now(timezone.utc).replace(microsecond=0),
        # Absent, not null, when there is none: what older versions wrote.
        **({"calibration": calibration} if calibration is not None else {}),
        **(extra or {}),
    )
    version = registry.publish(name, manifest)
    log.info("published adapter %s (%s, %.0f s)", name, config.method, manifest.wall_time_s)
    preferred = name
    if config.ensemble and calibration is not None:
        ensemble = build_ensemble(registry, name, config.dataset, config.validation_days,
                                  scored=(data.validation.articles, p_raw))
        spec = ensemble.manifest.ensemble
        preferred = ensemble.name if spec.after.f1 > calibration.after.f1 else name
        log.info("published ensemble %s; validation F1 %.4f against the adapter's %.4f: "
                 "validation prefers %s", ensemble.name, spec.after.f1,
                 calibration.after.f1, preferred)
    if config.publish_alias:
        registry.set_alias(config.publish_alias, preferred)
        log.info("alias %s -> %s", config.publish_alias, preferred)
    return version
