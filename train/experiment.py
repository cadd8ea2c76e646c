"""``signals experiment``: base vs LoRA vs LoRA+ vs DPO vs RLHF on the same data, and
what an update on newer data recovers.

1. **Train** on one bounded slice of the training window: LoRA and LoRA+ (same data,
   same steps, same learning rate; only B's rate differs), then DPO and RLHF, both
   starting from the LoRA adapter.
2. **Temporal part**: the LoRA adapter, trained on the early window, is updated on the
   next window (``update_split``) and evaluated again on the windows after it.
3. **Evaluate** every model on the same seeded sample of each later window, through the
   serving classifier in-process, each adapter as soon as it is trained; beside two
   TF-IDF + logistic-regression baselines: trained on the whole training split and cut
   at 0.5, and (``tfidf-logreg-validated``) under the adapters' own protocol, trained
   before the validation days and cut at the threshold chosen there.
4. **Report**: ``report.json``, ``report.md`` (comparison table, per-window F1 table,
   LoRA vs LoRA+ steps-to-target-loss) and PNG plots, in ``out_dir``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from math import ceil
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.dataset import load_split, read_manifest
from pipeline.settings import Paths
from train.config import ConfigError, TrainConfig, apply_overrides, derive_config
from train.config import validate_config
from train.curves import moving_average, steps_to_target

log = logging.getLogger(__name__)

_paths = Paths()

MODELS_IN_ORDER = ("tfidf-logreg", "tfidf-logreg-validated", "base", "lora", "loraplus", "dpo",
                   "rlhf", "lora-updated")


class ExperimentConfig(BaseModel):
    """One comparison run. Defaults are CPU-sized (about an hour on 2 cores)."""

    model_config = ConfigDict(extra="forbid")

    base_model: Path = _paths.models_dir / "SmolLM2-135M-Instruct"
    """Base model directory."""
    dataset: Path = _paths.datasets_dir / "reuters-acq"
    """Dataset with a training window and later windows (``signals data reuters``)."""
    registry: Path = _paths.registry_dir
    """Where the experiment's adapters are published (they stay usable afterwards)."""
    out_dir: Path | None = None
    """Report directory (default: ``$SIGNALS_DATA_DIR/runs/experiment-<time>``)."""

    train_split: str = "train"
    """The early window every method trains on."""
    train_examples: int | None = Field(default=320, ge=2)
    """Size of the training slice (the same articles for every method); None: the whole
    training window except its validation days."""
    sampling: str = "balanced"
    """Slice drawing: ``balanced`` (half signals) or ``random``."""
    validation_max_examples: int | None = Field(default=None, ge=2)
    """Fit each adapter's calibration on a seeded sample of at most this many articles of
    its validation window (the last 5 days of its training split); None: all of them."""
    max_prompt_tokens: int = Field(default=192, ge=32)
    """Prompt cap for training and evaluation alike."""
    batch_size: int = Field(default=8, ge=1)
    """Examples per optimiser step."""
    seed: int = 0
    """Seed of slices, samples and training."""

    sft_steps: int = Field(default=40, ge=1)
    """Optimiser steps of LoRA and of LoRA+."""
    learning_rate: float = Field(default=1e-3, gt=0)
    """LoRA and LoRA+ learning rate (A matrices; LoRA+ gives B ``loraplus_lr_ratio`` x)."""
    loraplus_lr_ratio: float = Field(default=16.0, ge=1)
    """LoRA+ B/A learning-rate ratio."""
    smooth: int = Field(default=5, ge=1)
    """Moving-average window over the per-step loss before steps-to-target is read."""
    target_loss: float | None = None
    """Loss both SFT runs race to; default: the highest end of any run's smoothed curve
    (so every LoRA and LoRA+ run reaches it)."""
    race_seeds: list[int] = []
    """Further seeds on which LoRA and LoRA+ (those of ``methods``) are trained again
    (another slice draw, order and initialisation), for the mean and spread of their
    steps-to-target and F1; these adapters are evaluated like the others
    (``lora-s<seed>``, ``loraplus-s<seed>``)."""

    dpo_steps: int = Field(default=20, ge=1)
    """DPO steps (from the LoRA adapter)."""
    dpo_learning_rate: float = Field(default=5e-5, gt=0)
    """DPO learning rate."""
    dpo_beta: float = Field(default=0.1, gt=0)
    """DPO beta."""
    reward_steps: int = Field(default=20, ge=1)
    """Reward-model steps (RLHF)."""
    rl_steps: int = Field(default=10, ge=1)
    """RLOO steps (from the LoRA adapter, against the reward model)."""
    rl_learning_rate: float = Field(default=1e-4, gt=0)
    """RLOO learning rate."""
    num_generations: int = Field(default=4, ge=2)
    """Completions per prompt in RLOO."""

    update_split: str | None = "1987-04"
    """The next window the LoRA adapter is updated on (None: no temporal part)."""
    update_examples: int | None = Field(default=160, ge=2)
    """Size of the update slice (None: the whole update window but its validation days)."""
    update_steps: int = Field(default=20, ge=1)
    """Optimiser steps of the update."""

    eval_splits: list[str] = ["1987-04", "1987-06"]
    """Later windows every model is evaluated on."""
    eval_per_split: int | None = Field(default=200, ge=1)
    """Seeded sample of each window (None: all of it)."""
    threshold: float | None = Field(default=None, ge=0, le=1)
    """P(signal) threshold for every model; None: each calibrated adapter's own
    (chosen on its validation window), 0.5 for the base, TF-IDF and uncalibrated ones."""
    methods: list[str] = ["lora", "loraplus", "dpo", "rlhf"]
    """Which methods to train (lora is needed by dpo, rlhf and the update)."""
    local: bool = True
    """Train in this process; false runs every training as a Ray Train job."""


def load_experiment_config(path: Path | None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    data: dict[str, Any] = {}
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"config file {path} does not exist")
        data.update(yaml.safe_load(Path(path).read_text()) or {})
    apply_overrides(data, overrides)
    try:
        config = ExperimentConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError("invalid experiment config: " + "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())) from None
    splits = read_manifest(config.dataset).splits if (config.dataset / "manifest.json").is_file() else {}
    for name in [config.train_split, *config.eval_splits, *filter(None, [config.update_split])]:
        if splits and name not in splits:
            raise ConfigError(f"split {name!r} is not in {config.dataset} ({', '.join(splits)})")
    unknown = set(config.methods) - {"lora", "loraplus", "dpo", "rlhf"}
    if unknown:
        raise ConfigError(f"methods: unknown {sorted(unknown)}")
    if {"dpo", "rlhf"} & set(config.methods) and "lora" not in config.methods:
        raise ConfigError("methods: dpo and rlhf start from the lora adapter; include lora")
    return config


def shared_train_config(config: ExperimentConfig) -> TrainConfig:
    """The training fields every run of the experiment shares (validated once: the base
    model and the dataset exist); each run derives its own from it."""
    return validate_config({
        "method": "lora", "base_model": config.base_model, "dataset": config.dataset,
        "registry": config.registry, "max_prompt_tokens": config.max_prompt_tokens,
        "batch_size": config.batch_size, "seed": config.seed, "sampling": config.sampling,
        "split": config.train_split, "max_examples": config.train_examples,
        "validation_max_examples": config.validation_max_examples, "save_steps": 10})


def _train(config: ExperimentConfig, shared: TrainConfig, **update: Any):
    from train.jobs import run_training

    train_config = derive_config(shared, **update)
    started = time.monotonic()
    version = run_training(train_config, local=config.local)
    log.info("%s trained in %.0f s: %s", train_config.method, time.monotonic() - started,
             version.name)
    return version


def run_experiment(config: ExperimentConfig) -> dict[str, Any]:
    """Train, evaluate and report; returns the report dict (also written to out_dir)."""
    from pipeline.dataset import labelled_sample
    from train.evaluate import Scorer, TfidfBaseline, TunedLexical
    from train.plots import plot_confusion_matrices, plot_loss_curves, plot_per_window

    started = time.monotonic()
    out = config.out_dir or _paths.data_dir / "runs" / (
        "experiment-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    shared = shared_train_config(config)

    # --- the baselines ------------------------------------------------------------
    # Every adapter is evaluated as soon as it is trained, and progress.json is rewritten
    # after every training and evaluation, so a run that is cut off (a time limit, a lost
    # machine) still leaves every model it finished, evaluated.
    adapters: dict[str, Any] = {}
    evaluations: dict[str, dict[str, Any]] = {split: {} for split in config.eval_splits}
    windows = {split: labelled_sample(load_split(config.dataset, split), config.eval_per_split,
                                      config.seed) for split in config.eval_splits}
    train_articles = load_split(config.dataset, config.train_split)
    baselines = [TfidfBaseline(train_articles,
                               threshold=0.5 if config.threshold is None else config.threshold)]
    if shared.validation_days and config.threshold is None:
        baselines.append(TfidfBaseline(train_articles, shared.validation_days))
        baselines.append(TunedLexical(train_articles, shared.validation_days,
                                      dataset=config.dataset.name))
    scorer = Scorer(config.base_model, config.registry, config.max_prompt_tokens)
    for split, articles in windows.items():
        for baseline in baselines:
            evaluations[split][baseline.name] = baseline.evaluate(articles, split).metrics
        evaluations[split]["base"] = scorer.evaluate(articles, None, split,
                                                     config.threshold).metrics
    _write_progress(out, config, adapters, evaluations)

    # --- train and evaluate ---------------------------------------------------------
    def train(label: str, **update: Any) -> None:
        adapters[label] = version = _train(config, shared, **update)
        _write_progress(out, config, adapters, evaluations)
        for split, articles in windows.items():
            if label == "lora-updated" and split <= config.update_split:
                continue  # it has seen this window
            evaluations[split][label] = scorer.evaluate(articles, version.name, split,
                                                        config.threshold).metrics
            _write_progress(out, config, adapters, evaluations)

    sft = {"max_steps": config.sft_steps, "learning_rate": config.learning_rate}
    plus = {**sft, "method": "loraplus", "loraplus_lr_ratio": config.loraplus_lr_ratio}
    if "lora" in config.methods:
        train("lora", method="lora", **sft)
    if "loraplus" in config.methods:
        train("loraplus", **plus)
    for seed in config.race_seeds:
        if "lora" in config.methods:
            train(f"lora-s{seed}", method="lora", seed=seed, **sft)
        if "loraplus" in config.methods:
            train(f"loraplus-s{seed}", seed=seed, **plus)
    if "dpo" in config.methods:
        train("dpo", method="dpo", init_adapter=adapters["lora"].name,
              max_steps=config.dpo_steps, learning_rate=config.dpo_learning_rate,
              beta=config.dpo_beta)
    if "rlhf" in config.methods:
        train("rlhf", method="rlhf", init_adapter=adapters["lora"].name,
              reward_steps=config.reward_steps, max_steps=config.rl_steps,
              learning_rate=config.rl_learning_rate, num_generations=config.num_generations)
    if config.update_split and "lora" in adapters:
        train("lora-updated", method="lora", split=config.update_split,
              max_examples=config.update_examples, init_adapter=adapters["lora"].name,
              max_steps=config.update_steps, learning_rate=config.learning_rate)

    for split, articles in windows.items():
        cut = "per model" if config.threshold is None else config.threshold
        plot_confusion_matrices(evaluations[split], f"{config.dataset.name} {split}: "
                                f"{len(articles)} articles, threshold {cut}",
                                out / f"confusion-{split}.png")

    # --- LoRA vs LoRA+ -----------------------------------------------------------
    race: dict[str, Any] = {}
    if {"lora", "loraplus"} <= adapters.keys():
        race = lora_race(config, adapters, evaluations)
        plot_loss_curves({m: adapters[m].manifest.metrics.loss_curve for m in ("lora", "loraplus")},
                         out / "loss-lora-vs-loraplus.png", race["target_loss"], config.smooth)

    per_window = {model: {split: evaluations[split].get(model, {}).get("f1")
                          for split in config.eval_splits}
                  for model in MODELS_IN_ORDER
                  if any(model in evaluations[s] for s in config.eval_splits)}
    plot_per_window(per_window, "F1", out / "f1-per-window.png")

    report = {
        "config": config.model_dump(mode="json"),
        "adapters": adapter_rows(adapters),
        "evaluations": evaluations,
        "f1_per_window": per_window,
        "lora_vs_loraplus": race,
        "wall_time_s": round(time.monotonic() - started, 1),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "quality.json").write_text(json.dumps(quality_table(report), indent=2))
    (out / "report.md").write_text(render_markdown(report))
    log.info("experiment report in %s", out)
    report["out_dir"] = str(out)
    return report


QUALITY_FIELDS = ("n", "threshold", "precision", "recall", "f1", "best_f1", "roc_auc", "ece")


def quality_table(report: dict[str, Any]) -> dict[str, Any]:
    """The machine-readable summary (``bench/results/quality.json``): per model and window,
    precision, recall, F1 at the model's own threshold, best F1, ROC-AUC, ECE."""
    models: dict[str, dict[str, Any]] = {}
    for split, results in report["evaluations"].items():
        for model, m in results.items():
            models.setdefault(model, {})[split] = {k: m.get(k) for k in QUALITY_FIELDS}
    return {"config": {k: report["config"][k] for k in (
                "train_split", "train_examples", "sampling", "max_prompt_tokens", "seed",
                "race_seeds", "eval_splits", "eval_per_split")},
            "adapters": {k: v["name"] for k, v in report["adapters"].items()},
            "models": models}


def adapter_rows(adapters: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What the report says of each trained adapter (its loss curve included)."""
    return {k: {"name": v.name, "method": v.manifest.method,
                "wall_time_s": v.manifest.wall_time_s,
                "window": v.manifest.dataset.window if v.manifest.dataset else None,
                "calibration": (v.calibration.model_dump(mode="json")
                                if v.calibration else None),
                "metrics": v.manifest.metrics.summary(),
                "loss_curve": v.manifest.metrics.loss_curve}
            for k, v in adapters.items()}


def _write_progress(out: Path, config: ExperimentConfig, adapters: dict[str, Any],
                    evaluations: dict[str, dict[str, Any]]) -> None:
    (out / "progress.json").write_text(json.dumps(
        {"config": config.model_dump(mode="json"), "adapters": adapter_rows(adapters),
         "evaluations": evaluations}, indent=2))


def lora_race(config: ExperimentConfig, adapters: dict[str, Any],
              evaluations: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """LoRA vs LoRA+ over every seed: optimiser steps until the smoothed training loss
    reaches one common target, and F1 per window; mean and spread (min..max) per method."""
    from statistics import mean

    seeds = [config.seed, *config.race_seeds]
    labels = {m: [m] + [f"{m}-s{s}" for s in config.race_seeds] for m in ("lora", "loraplus")}
    curves = {label: adapters[label].manifest.metrics.loss_curve
              for runs in labels.values() for label in runs}
    target = config.target_loss
    if target is None:
        # rounded up, so the run whose end sets it reaches it too
        target = ceil(max(moving_average(c, config.smooth)[-1] for c in curves.values())
                      * 1e4) / 1e4
    steps = {label: steps_to_target(c, target, config.smooth) for label, c in curves.items()}

    def spread(values: list[float | int | None]) -> dict[str, Any]:
        known = [v for v in values if v is not None]
        return {"values": values, "mean": round(mean(known), 4) if known else None,
                "min": min(known, default=None), "max": max(known, default=None)}

    per_method = {m: {"steps_to_target": spread([steps[label] for label in runs]),
                      "f1": {split: spread([evaluations[split].get(label, {}).get("f1")
                                            for label in runs])
                             for split in evaluations}}
                  for m, runs in labels.items()}
    lora_mean = per_method["lora"]["steps_to_target"]["mean"]
    plus_mean = per_method["loraplus"]["steps_to_target"]["mean"]
    return {"target_loss": target, "smooth": config.smooth, "seeds": seeds,
            "steps_to_target": {"lora": steps["lora"], "loraplus": steps["loraplus"]},
            "per_method": per_method,
            "speedup": round(lora_mean / plus_mean, 2) if lora_mean and plus_mean else None}


def render_markdown(report: dict[str, Any]) -> str:
    """The comparison as markdown tables (what bench/RESULTS.md quotes)."""
    config = report["config"]
    lines = [f"# Experiment: {Path(config['dataset']).name}, trained on `{config['train_split']}`"
             f" ({config['train_examples'] or 'all'} {config['sampling']} examples, "
             f"{config['max_prompt_tokens']}-token prompts)", ""]
    for split, models in report["evaluations"].items():
        n = next(iter(models.values()))["n"]
        cut = "per model" if config["threshold"] is None else config["threshold"]
        lines += [f"## {split}: {n} articles, threshold {cut}",
                  "", "| model | threshold | TP | FP | FN | TN | accuracy | precision | recall "
                  "| F1 | best F1 | ROC-AUC | ECE |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for model in MODELS_IN_ORDER:
            m = models.get(model)
            if m:
                lines.append(f"| {model} | {m['threshold']:.3f} | {m['tp']} | {m['fp']} | "
                             f"{m['fn']} | {m['tn']} | "
                             f"{m['accuracy']:.3f} | {m['precision']:.3f} | {m['recall']:.3f} | "
                             f"{m['f1']:.3f} | {m.get('best_f1') or '-'} | "
                             f"{m['roc_auc'] if m['roc_auc'] is not None else '-'} | "
                             f"{m['ece']:.3f} |")
        lines.append("")
    splits = list(report["evaluations"])
    lines += ["## F1 per window", "", "| model | " + " | ".join(splits) + " |",
              "|---|" + "---|" * len(splits)]
    for model, row in report["f1_per_window"].items():
        lines.append(f"| {model} | " + " | ".join(
            "-" if row.get(s) is None else f"{row[s]:.3f}" for s in splits) + " |")
    race = report.get("lora_vs_loraplus")
    if race:
        s = race["steps_to_target"]
        lines += ["", "## LoRA vs LoRA+", "",
                  f"Steps until the loss (moving average of {race['smooth']}) reaches "
                  f"{race['target_loss']}: LoRA {s['lora'] or 'never'}, LoRA+ "
                  f"{s['loraplus'] or 'never'}"
                  + (f" (seed {race['seeds'][0]})" if len(race.get("seeds", [])) > 1 else "")
                  + f"; speed-up {race['speedup'] or '-'}x (mean over seeds)."]
        if len(race.get("seeds", [])) > 1:
            splits_f1 = list(race["per_method"]["lora"]["f1"])
            lines += ["", f"Over seeds {race['seeds']} (mean, min..max):", "",
                      "| method | steps to target | " + " | ".join(
                          f"F1 {split}" for split in splits_f1) + " |",
                      "|---|---|" + "---|" * len(splits_f1)]
            for method, row in race["per_method"].items():
                cells = [row["steps_to_target"]] + [row["f1"][x] for x in splits_f1]
                lines.append(f"| {method} | " + " | ".join(
                    "-" if c["mean"] is None else f"{c['mean']} ({c['min']}..{c['max']})"
                    for c in cells) + " |")
    lines += ["", "## Training runs", "", "| model | adapter | window | wall time (s) | metrics |",
              "|---|---|---|---|---|"]
    for label, a in report["adapters"].items():
        metrics = ", ".join(f"{k}={v}" for k, v in a["metrics"].items() if not isinstance(v, dict))
        lines.append(f"| {label} | {a['name']} | {a['window'][0]}..{a['window'][1]} | "
                     f"{a['wall_time_s']} | {metrics} |")
    return "\n".join(lines) + "\n"
