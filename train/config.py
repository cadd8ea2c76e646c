"""Typed training configuration: one class per method, YAML file + ``--set`` overrides.

``method`` picks the class. Every field is documented and range-checked; a bad config
fails before any work starts, with a message naming the field::

    method: loraplus          # lora | loraplus | qlora | dpo | rlhf
    max_examples: 320
    loraplus_lr_ratio: 16

The methods and their papers:

- ``lora``: LoRA (Hu et al. 2021, arXiv:2106.09685) SFT, loss on the answer token only.
- ``loraplus``: LoRA+ (Hayou et al. 2024, arXiv:2402.12354): the B matrices learn
  ``loraplus_lr_ratio`` x faster than A (peft's ``create_loraplus_optimizer``).
- ``qlora``: QLoRA (Dettmers et al. 2023, arXiv:2305.14314): ``lora`` on a 4-bit NF4 base
  (bitsandbytes). ``load_in_4bit: true`` does the same for any other method.
- ``dpo``: DPO (Rafailov et al. 2023, arXiv:2305.18290) with TRL, chosen = the true
  label; from the base model or from an SFT adapter (``init_adapter``).
- ``rlhf``: a reward model (TRL ``RewardTrainer``) on the same preference pairs, then
  RLOO (Ahmadian et al. 2024, arXiv:2402.14740) or GRPO (Shao et al. 2024,
  arXiv:2402.03300) against it with TRL, from an SFT adapter. PPO left TRL in 1.13.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Field, TypeAdapter, ValidationError,
                      field_validator, model_validator)

from pipeline.prompt import DEFAULT_MAX_PROMPT_TOKENS, PromptStyle
from pipeline.settings import Paths
from classify.registry import ALIAS_PATTERN

_paths = Paths()

# TRL's DPOConfig.loss_type values (trl 1.16), summed when several are given.
DpoLoss = Literal["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair",
                  "sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop",
                  "sft", "sigmoid_norm"]


class ConfigError(ValueError):
    """A training config that cannot run; the message names the offending field."""


class TrainConfig(BaseModel):
    """Fields every method shares: data, base model, LoRA shape, optimiser, registry.

    LoRA defaults follow the original work (r=16, alpha=32, dropout 0.1, lr 1e-3, one
    epoch) on the attention projections.
    """

    # Defaults are validated too, so the default paths (relative to the data directory)
    # are made absolute here, before the config travels to a Ray worker that runs in
    # another working directory.
    # Attribute docstrings become field descriptions: `signals train --fields` shows them.
    model_config = ConfigDict(extra="forbid", validate_default=True,
                              use_attribute_docstrings=True)

    trainer: ClassVar[str]
    """``module:function`` that trains a method's config (each subclass names its own;
    imported only when a job runs, :func:`train.jobs.method_function`)."""

    method: str
    """Training method: lora, loraplus, qlora, dpo or rlhf."""

    base_model: Path = Field(default=_paths.models_dir / "SmolLM2-135M-Instruct")
    """Local Hugging Face causal-LM directory (``signals model prepare`` makes the default)."""

    dataset: Path = Field(default=_paths.datasets_dir / "reuters-acq")
    """Dataset directory with a manifest (``signals data reuters`` makes the default)."""

    split: str = "train"
    """Split of the dataset to train on (its date range becomes the adapter's data window)."""

    validation_days: int | None = Field(default=5, ge=1, le=365)
    """Hold out the last this-many calendar days of the split as the validation window:
    never trained on; after training the adapter's calibration and F1-optimal threshold
    are fitted there (``classify/calibration.py``). The default 5 days hold 1,047 articles
    (189 signals) of Reuters' training window. None = no window, no calibration (the
    adapter then serves uncalibrated at the server's threshold)."""

    validation_max_examples: int | None = Field(default=None, ge=2)
    """Fit the calibration on a seeded random sample of at most this many articles of
    the validation window (random, so the window's signal rate is kept); None = all."""

    calibration_method: Literal["platt", "temperature"] = "platt"
    """``platt``: slope and intercept on logit P(signal) (corrects a shifted base rate);
    ``temperature``: slope only."""

    ensemble: bool = False
    """After the calibration, also publish an ensemble version: this adapter's logit
    combined with the TF-IDF model chosen on the same validation window, the weights
    fitted there from the scores the calibration already computed
    (``train/ensemble.py``); the log and the manifest say which of the two validation
    prefers. Needs a validation window."""

    max_examples: int | None = Field(default=None, ge=1)
    """Train on at most this many examples of the split (a bounded slice); None = all."""

    sampling: Literal["random", "balanced"] = "random"
    """How the slice is drawn: uniformly, or half signals and half not."""

    seed: int = 0
    """Seed for the slice and for training."""

    max_prompt_tokens: int = Field(default=DEFAULT_MAX_PROMPT_TOKENS, ge=32, le=32768)
    """Prompt length cap (template included); longer article texts are cut."""

    prompt_style: PromptStyle = "full"
    """The instruction the adapter is trained, calibrated and served with
    (``pipeline/prompt.py``): ``full``, the task described in words, as the base model is
    asked; or ``short``, a one-line question (78 fewer tokens per prompt with SmolLM2: the
    article text of a 192-token full prompt fits a cap of 114). Recorded in the manifest, so every
    consumer renders the adapter's prompts the same way. An ``init_adapter`` must have
    been trained with the same style."""

    rank: int = Field(default=16, ge=1, le=256)
    """LoRA rank r."""

    alpha: int = Field(default=32, ge=1)
    """LoRA scaling alpha (the update is scaled by alpha / r)."""

    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    """Dropout on the LoRA input."""

    target_modules: list[str] = Field(default=["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1)
    """Modules that get LoRA matrices (default: the attention projections)."""

    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass instead of keeping them (TRL's SFT
    default): less memory, more compute. Off here: SmolLM2-135M at batch 8 and 192
    tokens trained 1.04x-1.40x faster per step without it on a 2-core CPU (three
    side-by-side runs of ``bench/bench_training.py``), with the same losses; turn it
    on for a base model whose activations do not fit."""

    init_adapter: str | None = None
    """Start from this adapter (registry name, alias, or directory) instead of a fresh
    LoRA: continue training it on newer data, or align an SFT adapter (dpo, rlhf). An
    alias is read once, when the run starts: the run and its manifest name the version
    it pointed at then, even if the alias moves during the run."""

    learning_rate: float = Field(default=1e-3, gt=0.0, le=1.0)
    """Peak learning rate (linear decay)."""

    epochs: float = Field(default=1.0, gt=0.0)
    """Passes over the slice (ignored when ``max_steps`` is set)."""

    max_steps: int | None = Field(default=None, ge=1)
    """Stop after this many optimiser steps."""

    batch_size: int = Field(default=8, ge=1)
    """Examples per optimiser step on one worker."""

    bf16: bool | None = None
    """bfloat16 autocast. None (default) = where the hardware computes bfloat16 natively:
    a CUDA GPU that supports it, or a CPU with AVX-512 BF16/AMX (about 2x faster than
    float32 there); float32 elsewhere, e.g. on CPUs without native bfloat16, where
    autocast is tens of times slower than float32. True/False force it."""

    load_in_4bit: bool = False
    """Load the base model in 4-bit NF4 (bitsandbytes) and train LoRA on top (QLoRA)."""

    save_steps: int = Field(default=20, ge=1)
    """Checkpoint every this many steps when run under Ray Train (resume point)."""

    registry: Path = Field(default=_paths.registry_dir)
    """Adapter registry directory the finished adapter is published to."""

    publish_alias: str | None = Field(default=None, pattern=ALIAS_PATTERN.pattern)
    """Point this registry alias at the published version (the one validation prefers
    when an ensemble is published beside it): ``candidate`` for a retraining that the
    promotion gate then judges against production."""

    @field_validator("base_model", "dataset", "registry")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        # Ray workers and job entry points do not share the caller's working directory.
        return path.expanduser().resolve()

    @field_validator("target_modules")
    @classmethod
    def _no_lm_head(cls, modules: list[str]) -> list[str]:
        if "lm_head" in modules:
            raise ValueError("lm_head cannot carry a LoRA adapter (TRL/vLLM do not support it)")
        return modules

    @model_validator(mode="after")
    def _inputs_exist(self):
        if not (self.base_model / "config.json").is_file():
            raise ValueError(
                f"base_model: {self.base_model} is not a Hugging Face model directory "
                "(no config.json); run `signals model prepare` or name another one")
        if not (self.dataset / "manifest.json").is_file():
            raise ValueError(
                f"dataset: {self.dataset} is not a dataset directory (no manifest.json); "
                "run `signals data reuters` or name another one")
        if self.ensemble and self.validation_days is None:
            raise ValueError("ensemble: an ensemble is fitted on the validation window; "
                             "set validation_days")
        return self


class LoraTrainConfig(TrainConfig):
    """LoRA supervised fine-tuning: prompt -> label token, loss on the answer only."""

    trainer = "train.lora:train_lora"

    method: Literal["lora"] = "lora"
    """Plain LoRA SFT."""


class QLoraTrainConfig(TrainConfig):
    """LoRA SFT on a 4-bit NF4 base model (bitsandbytes); GPU first, works on CPU."""

    trainer = "train.lora:train_lora"

    method: Literal["qlora"] = "qlora"
    """LoRA SFT with ``load_in_4bit`` forced on."""

    load_in_4bit: Literal[True] = True
    """Always true for QLoRA."""


class LoraPlusTrainConfig(TrainConfig):
    """LoRA+ SFT: the same as ``lora`` with B learning ``loraplus_lr_ratio`` x faster."""

    trainer = "train.loraplus:train_loraplus"

    method: Literal["loraplus"] = "loraplus"
    """LoRA+ SFT."""

    loraplus_lr_ratio: float = Field(default=16.0, ge=1.0)
    """Learning rate of the B matrices / that of the A matrices (the paper's lambda)."""


class DpoTrainConfig(TrainConfig):
    """Direct preference optimisation: prefer the true label's answer over the other."""

    trainer = "train.dpo:train_dpo"

    method: Literal["dpo"] = "dpo"
    """DPO with TRL; the reference is the starting point (base, or ``init_adapter``)."""

    beta: float = Field(default=0.1, gt=0.0)
    """KL strength of DPO's implicit reward (higher stays closer to the reference)."""

    learning_rate: float = Field(default=5e-5, gt=0.0, le=1.0)
    """Peak learning rate; DPO needs a smaller one than SFT."""

    loss_type: list[DpoLoss] = Field(default=["sigmoid"], min_length=1)
    """TRL's DPO losses, summed with ``loss_weights``: ``[sigmoid]`` is DPO;
    ``[sigmoid, sft]`` adds the chosen answer's negative log-likelihood (RPO), which
    keeps the policy on the labels SFT learnt while DPO widens the margin."""

    loss_weights: list[float] | None = None
    """One weight per ``loss_type`` entry (TRL's default: 1.0 each)."""

    @model_validator(mode="after")
    def _one_weight_per_loss(self) -> DpoTrainConfig:
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(f"loss_weights has {len(self.loss_weights)} entries for "
                             f"{len(self.loss_type)} loss_type entries")
        return self


class RlhfTrainConfig(TrainConfig):
    """Reward model + RL (RLOO or GRPO) starting from an SFT adapter."""

    trainer = "train.rlhf:train_rlhf"

    method: Literal["rlhf"] = "rlhf"
    """RLHF: reward model on preference pairs, then the policy against it."""

    init_adapter: str
    """The SFT adapter the policy starts from (required: a raw model that never answers
    correctly gets zero advantage and learns nothing)."""

    algorithm: Literal["rloo", "grpo"] = "rloo"
    """RL trainer: RLOO (TRL's maintained successor of PPO) or GRPO."""

    reward_steps: int = Field(default=20, ge=1)
    """Optimiser steps of the reward model."""

    reward_learning_rate: float = Field(default=1e-3, gt=0.0, le=1.0)
    """Learning rate of the reward model's LoRA and score head."""

    num_generations: int = Field(default=4, ge=2)
    """Completions sampled per prompt (the group RLOO/GRPO compares)."""

    rl_beta: float = Field(default=0.05, ge=0.0)
    """KL penalty towards the starting policy."""

    temperature: float = Field(default=1.0, gt=0.0)
    """Sampling temperature of the completions."""

    learning_rate: float = Field(default=1e-4, gt=0.0, le=1.0)
    """Peak learning rate of the policy."""

    @model_validator(mode="after")
    def _whole_groups(self):
        if self.batch_size % self.num_generations:
            raise ValueError(
                f"batch_size: {self.batch_size} must be a multiple of num_generations "
                f"({self.num_generations}): each step holds whole groups of completions")
        return self


CONFIGS: dict[str, type[TrainConfig]] = {
    c.model_fields["method"].default: c
    for c in (LoraTrainConfig, LoraPlusTrainConfig, QLoraTrainConfig, DpoTrainConfig,
              RlhfTrainConfig)}
"""The one table of training methods: name -> its config class (which names its
trainer). The discriminated union, ``METHODS``, config errors and the job runner
are all read from it."""

METHODS = tuple(CONFIGS)

AnyTrainConfig = Annotated[Union[tuple(CONFIGS.values())], Field(discriminator="method")]
_any_config = TypeAdapter(AnyTrainConfig)


def describe_fields(method: str) -> str:
    """The fields of ``method``'s config: name, type, default and the docstring written
    under it in this file (``signals train --fields METHOD``)."""
    import textwrap

    import typing

    def type_name(annotation: Any) -> str:
        if typing.get_origin(annotation) is Literal:
            return " | ".join(repr(a) for a in typing.get_args(annotation))
        if isinstance(annotation, type) and (annotation.__module__ == "builtins"
                                             or annotation is Path):
            return annotation.__name__
        return str(annotation).replace("typing.", "").replace("pathlib.", "")

    config_class = CONFIGS[method]
    lines = [f"{method}: {(config_class.__doc__ or '').strip().splitlines()[0]}", ""]
    for name, field in config_class.model_fields.items():
        default = field.default
        shown = ("required" if field.is_required() else "[]" if field.default_factory is list
                 else repr(str(default)) if isinstance(default, Path) else repr(default))
        lines.append(f"{name}: {type_name(field.annotation)} = {shown}")
        for paragraph in (field.description or "").split("\n\n"):
            text = " ".join(paragraph.split())
            if text:
                lines += textwrap.wrap(text, 88, initial_indent="    ",
                                       subsequent_indent="    ")
    return "\n".join(lines)


def apply_overrides(data: dict[str, Any], assignments: Sequence[str]) -> dict[str, Any]:
    """Apply ``--set field=value`` assignments to ``data`` (values read as YAML: numbers,
    booleans, lists); the one parser of ``--set`` for training and experiment configs."""
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {assignment!r} is not of the form field=value")
        data[key.strip().replace("-", "_")] = yaml.safe_load(raw)
    return data


def _explain(error: ValidationError) -> str:
    problems = []
    for e in error.errors():
        # The discriminator puts the method name first in the location; drop it.
        loc = [str(p) for p in e["loc"]]
        if loc and loc[0] in METHODS:
            loc = loc[1:]
        problems.append(f"{'.'.join(loc) or 'config'}: {e['msg']}")
    return "; ".join(problems)


def load_config(path: Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML config (or the defaults), apply ``field=value`` overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of field: value")
        data.update(loaded)
    apply_overrides(data, overrides)
    return validate_config(data)


def validate_config(data: dict[str, Any]) -> TrainConfig:
    """The config class of ``data['method']`` (default lora), validated; a
    :class:`ConfigError` naming the fields otherwise."""
    data = {"method": "lora", **data}
    if data["method"] not in METHODS:
        raise ConfigError(f"method: unknown training method {data['method']!r}; "
                          f"known: {', '.join(METHODS)}")
    try:
        return _any_config.validate_python(data)
    except ValidationError as error:
        raise ConfigError(f"invalid training config: {_explain(error)}") from None


def derive_config(config: TrainConfig, **update: Any) -> TrainConfig:
    """``config`` with the fields in ``update`` changed (``method`` included), validated
    again. Only fields set explicitly carry over, so a new method gets its own defaults
    (its learning rate, say) for what neither ``config`` nor ``update`` sets.

    Not ``config.model_copy(update=...)``: that skips validation and, across methods,
    would drop the fields the other method's class has (DPO's ``beta`` on a LoRA config).
    """
    return validate_config(config.model_dump(exclude_unset=True) | update)
