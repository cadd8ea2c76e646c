"""Publishing a finished adapter: its calibration fitted on the validation window, its
manifest (provenance, hyper-parameters, metrics), the atomic move into the registry, the
ensemble version beside it when asked, and the alias it is published under."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from classify.manifest import AdapterManifest, DatasetWindow, LoraShape
from classify.registry import AdapterRegistry, AdapterVersion
from classify.validation import fit_on_window, raw_p_signal
from train.config import TrainConfig
from train.data import TrainingData
from train.ensemble import build_ensemble
from train.trainer import RunContext

log = logging.getLogger(__name__)


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
