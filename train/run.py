"""The prologue and epilogue every training method shares.

A method module reads top to bottom as config -> load -> fit -> save; what is the same
in all of them is here: :func:`start_run` (seed, the data slice, the tokenizer, the
adapter's registry name and staging directory) and :meth:`MethodRun.publish` (the
manifest, then the atomic move into the registry).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from train.data import TrainingData, load_training_data
from train.model import check_prompt_style, load_tokenizer, resolve_adapter
from train.trainer import RunContext
from train.publish import publish_adapter
from train.config import TrainConfig
from classify.registry import AdapterRegistry, AdapterVersion


@dataclass
class MethodRun:
    """One run of a method: its config, how it is run, and what the prologue loaded."""

    config: TrainConfig
    context: RunContext
    started: float
    """``time.monotonic()`` at the start (the manifest's wall time)."""
    data: TrainingData
    tokenizer: Any
    registry: AdapterRegistry
    name: str
    """Registry name the adapter is published under."""
    staging: Path
    """Where the trainer writes and the adapter is saved before it is published."""

    def publish(self, metrics: dict[str, Any], tokens_seen: float,
                extra: dict[str, Any] | None = None) -> AdapterVersion:
        """The epilogue: write the manifest and publish the staged adapter."""
        return publish_adapter(self.config, self.registry, self.name, self.staging, self.data,
                               metrics, tokens_seen, self.started, self.context, extra)


def start_run(config: TrainConfig, context: RunContext | None = None) -> MethodRun:
    """The prologue: seed torch, load the data slice and the tokenizer, name the adapter
    and stage its directory."""
    import torch

    context = context or RunContext()
    started = time.monotonic()
    torch.manual_seed(config.seed)
    if config.init_adapter:
        check_prompt_style(resolve_adapter(config.init_adapter, config.registry), config)
    data = load_training_data(config)
    tokenizer = load_tokenizer(config.base_model)
    registry = AdapterRegistry(config.registry)
    name = context.name_in(registry, config)
    return MethodRun(config, context, started, data, tokenizer, registry, name,
                     registry.staging_dir(name))
