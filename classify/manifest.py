"""An adapter version's ``manifest.json`` as a typed model, and where its paths point.

Training writes one :class:`AdapterManifest` per version (method, base model, the data
window it learnt from, the config, metrics, calibration, provenance); serving,
evaluation, the demo and the experiment read it as attributes. Fields an older or newer
version wrote that this one does not know are kept (``extra="allow"``) and written back
unchanged, so copying a manifest into a new version (a variant, a recalibration) loses
nothing; fields older versions did not write are optional.

**Paths.** ``base_model`` and ``dataset.path`` are stored *relative to the registry root*
(the directory holding ``aliases.json``) when they lie under the registry root's parent
(the data directory in the default layout: ``data/registry``, ``data/datasets``,
``data/models``), e.g. ``"../datasets/reuters-acq"``; anything else stays absolute. The
registry resolves them against its own root on read, so a data directory copied to
another machine or volume keeps working, and an absolute path from an older manifest is
used as it is. In memory (and in the API's JSON) the paths are always absolute.
``hyperparameters`` is the training config as it was given and is not rewritten.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.dataset import IsoTime, malformed_field
from pipeline.prompt import PromptStyle
from classify.calibration import Calibration, EnsembleSpec


class InvalidManifest(ValueError):
    """A manifest that is not JSON, or a field that is present but malformed."""


class _Open(BaseModel):
    """A manifest section: known fields typed, unknown ones kept as they came."""

    model_config = ConfigDict(extra="allow")


class DatasetWindow(_Open):
    """The data an adapter was trained on."""

    name: str | None = None
    """Dataset name (its directory name in the datasets folder)."""

    path: Path | None = None
    """Dataset directory (absolute in memory; relative to the registry root on disk
    when it lies in the data directory)."""

    version: str | None = None
    """The dataset manifest's ``version`` (or, for older datasets, ``built_at``)."""

    split: str | None = None
    """Split the training slice was drawn from."""

    window: list[str] | None = None
    """``[first, last]`` publication day the slice was drawn from (ISO dates); the
    validation window carved from the split's end comes after ``last``."""

    examples: int | None = None
    """Labelled articles trained on."""

    signals: int | None = None
    """Of which signals."""


class LoraShape(_Open):
    """What vLLM must be started with to load the adapter."""

    rank: int | None = None
    """LoRA rank ``r``."""

    alpha: int | float | None = None
    """LoRA ``alpha`` (scaling = alpha / r)."""

    target_modules: list[str] = []
    """Modules LoRA is attached to (``q_proj``, ``v_proj``, ...)."""


class Hyperparameters(_Open):
    """The training config as it was given (``TrainConfig.model_dump``); the fields
    read after training are typed, the rest is kept as written."""

    max_prompt_tokens: int | None = None
    """Prompt cap in tokens at training time; serving renders prompts with the same cap."""

    load_in_4bit: bool | None = None
    """Whether the base was loaded in 4-bit NF4 (QLoRA)."""

    prompt_style: PromptStyle | None = None
    """The instruction its prompts carry (``full`` / ``short``); older versions record
    none and were trained with ``full``."""


class Metrics(_Open):
    """Training metrics; methods add their own (``kl_curve``, ``reward_model``, ...)."""

    steps: int | None = None
    """Optimiser steps taken."""

    first_loss: float | None = None
    """Training loss at the first logged step."""

    last_loss: float | None = None
    """Training loss at the last logged step."""

    loss_curve: list[float] = []
    """Training loss at every logged step."""

    def summary(self) -> dict[str, Any]:
        """Every metric except the per-step curves (what a person wants to read)."""
        return {k: v for k, v in self.model_dump(mode="json", exclude_unset=True).items()
                if not k.endswith("curve")}


class AdapterManifest(_Open):
    """One adapter version's ``manifest.json``."""

    name: str | None = None
    """The version's registry name (set by :meth:`AdapterRegistry.publish`)."""

    method: str | None = None
    """Training method: ``lora``, ``loraplus``, ``dpo``, ``rlhf``."""

    base_model: Path | None = None
    """Base model directory (see the module docstring for how it is stored)."""

    base_model_name: str | None = None
    """The base model directory's name (e.g. ``SmolLM2-135M-Instruct``)."""

    dataset: DatasetWindow | None = None
    """The data window trained on."""

    hyperparameters: Hyperparameters = Hyperparameters()
    """The training config as given."""

    lora: LoraShape | None = None
    """The adapter's LoRA shape (vLLM's ``--max-lora-rank`` and target modules)."""

    metrics: Metrics = Metrics()
    """Training metrics."""

    tokens_seen: int | None = None
    """Prompt tokens the optimiser saw (estimated from the mean prompt length)."""

    wall_time_s: float | None = None
    """Seconds from the start of the run to publishing, calibration included."""

    resumed_from_step: int | None = None
    """Checkpoint step a Ray Train run resumed from after a worker failure; None if none."""

    git_commit: str | None = None
    """Commit of the code that trained it, when run from a git checkout."""

    created_at: IsoTime | None = None
    """When the version was published (UTC)."""

    calibration: Calibration | None = None
    """Calibration and threshold; None for versions made without a validation window
    (they serve uncalibrated)."""

    init_adapter: str | None = None
    """Adapter training started from (DPO, RLHF, continued training)."""

    algorithm: str | None = None
    """RL algorithm of an ``rlhf`` version (``rloo``, ``grpo``)."""

    recalibrated_from: str | None = None
    """The version whose weights this recalibrated copy shares."""

    variant_of: str | None = None
    """The version this scaled copy (:mod:`classify.variants`) was made from."""

    scale: float | None = None
    """Factor a variant's LoRA B matrices were multiplied by."""

    ensemble: EnsembleSpec | None = None
    """An ensemble version's combination of its adapter with a lexical model; None for
    a plain adapter (every version written before ensembles existed)."""

    ensemble_of: str | None = None
    """The adapter version whose weights this ensemble version shares."""

    @classmethod
    def parse(cls, raw: Any, name: str) -> AdapterManifest:
        """Validate ``raw`` (the decoded JSON); :class:`InvalidManifest` names the
        version, the field and what is wrong with it."""
        try:
            return cls.model_validate(raw)
        except ValidationError as error:
            raise InvalidManifest(f"adapter {name}: {malformed_field(error)}") from None

    def to_json(self) -> dict[str, Any]:
        """The JSON shape: the fields that were given or read, as they were given; the
        calibration (a closed, fully typed model) whole, as it was always written."""
        data = self.model_dump(mode="json", exclude_unset=True)
        if self.calibration is not None:
            data["calibration"] = self.calibration.model_dump(mode="json")
        if self.ensemble is not None:
            data["ensemble"] = self.ensemble.model_dump(mode="json")
        return data

    def with_paths(self, convert) -> AdapterManifest:
        """A copy whose ``base_model`` and ``dataset.path`` went through ``convert``."""
        update: dict[str, Any] = {}
        if self.base_model is not None:
            update["base_model"] = convert(self.base_model)
        if self.dataset is not None and self.dataset.path is not None:
            update["dataset"] = self.dataset.model_copy(
                update={"path": convert(self.dataset.path)})
        return self.model_copy(update=update)


def relative_to_registry(path: Path, registry_root: Path) -> Path:
    """``path`` relative to ``registry_root`` when it lies under the root's parent (the
    data directory); otherwise absolute."""
    root = Path(registry_root).resolve()
    target = Path(path).resolve()
    if target.is_relative_to(root.parent):
        return Path(os.path.relpath(target, root))
    return target


def resolve_in_registry(path: Path, registry_root: Path) -> Path:
    """A stored path made absolute: relative ones against ``registry_root``."""
    path = Path(path)
    return path if path.is_absolute() else (Path(registry_root) / path).resolve()
