"""Typed training configuration: YAML file + ``--set field=value`` overrides.

Every field is documented and range-checked; a bad config fails before any work
starts, with a message naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.prompt import DEFAULT_MAX_PROMPT_TOKENS
from pipeline.settings import Paths

_paths = Paths()


class ConfigError(ValueError):
    """A training config that cannot run; the message names the offending field."""


class LoraTrainConfig(BaseModel):
    """LoRA supervised fine-tuning of the base model on the signal task.

    Defaults follow the original work (r=16, alpha=32, dropout 0.1, lr 1e-3, one epoch)
    on the attention projections, with the loss on the answer token only.
    """

    model_config = ConfigDict(extra="forbid")

    method: Literal["lora"] = "lora"
    """Training method. Only ``lora`` exists so far."""

    base_model: Path = Field(default=_paths.models_dir / "SmolLM2-135M-Instruct")
    """Local Hugging Face causal-LM directory (``signals model prepare`` makes the default)."""

    dataset: Path = Field(default=_paths.datasets_dir / "reuters-acq")
    """Dataset directory with a manifest (``signals data reuters`` makes the default)."""

    split: str = "train"
    """Split of the dataset to train on (its date range becomes the adapter's data window)."""

    max_examples: int | None = Field(default=None, ge=1)
    """Train on at most this many examples of the split (a bounded slice); None = all."""

    sampling: Literal["random", "balanced"] = "random"
    """How the slice is drawn: uniformly, or half signals and half not."""

    seed: int = 0
    """Seed for the slice and for training."""

    max_prompt_tokens: int = Field(default=DEFAULT_MAX_PROMPT_TOKENS, ge=32, le=32768)
    """Prompt length cap (template included); longer article texts are cut."""

    rank: int = Field(default=16, ge=1, le=256)
    """LoRA rank r."""

    alpha: int = Field(default=32, ge=1)
    """LoRA scaling alpha (the update is scaled by alpha / r)."""

    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    """Dropout on the LoRA input."""

    target_modules: list[str] = Field(default=["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1)
    """Modules that get LoRA matrices (default: the attention projections)."""

    learning_rate: float = Field(default=1e-3, gt=0.0, le=1.0)
    """Peak learning rate (linear decay)."""

    epochs: float = Field(default=1.0, gt=0.0)
    """Passes over the slice (ignored when ``max_steps`` is set)."""

    max_steps: int | None = Field(default=None, ge=1)
    """Stop after this many optimiser steps."""

    batch_size: int = Field(default=8, ge=1)
    """Examples per optimiser step on one device."""

    bf16: bool = True
    """bfloat16 autocast (on CPU too); False trains in float32 (about 2x slower on CPU)."""

    registry: Path = Field(default=_paths.registry_dir)
    """Adapter registry directory the finished adapter is published to."""

    @field_validator("target_modules")
    @classmethod
    def _no_lm_head(cls, modules: list[str]) -> list[str]:
        if "lm_head" in modules:
            raise ValueError("lm_head cannot carry a LoRA adapter (TRL/vLLM do not support it)")
        return modules

    @model_validator(mode="after")
    def _inputs_exist(self) -> LoraTrainConfig:
        if not (self.base_model / "config.json").is_file():
            raise ValueError(
                f"base_model: {self.base_model} is not a Hugging Face model directory "
                "(no config.json); run `signals model prepare` or name another one")
        if not (self.dataset / "manifest.json").is_file():
            raise ValueError(
                f"dataset: {self.dataset} is not a dataset directory (no manifest.json); "
                "run `signals data reuters` or name another one")
        return self


def _apply_override(data: dict[str, Any], assignment: str) -> None:
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {assignment!r} is not of the form field=value")
    data[key.strip().replace("-", "_")] = yaml.safe_load(raw)


def load_config(path: Path | None = None, overrides: list[str] = ()) -> LoraTrainConfig:
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
    for assignment in overrides:
        _apply_override(data, assignment)
    method = data.get("method", "lora")
    if method != "lora":
        raise ConfigError(f"method: unknown training method {method!r}; known: lora")
    try:
        return LoraTrainConfig.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"invalid training config: {problems}") from None
