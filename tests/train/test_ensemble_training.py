"""``ensemble: true``: a training run publishes the adapter and, beside it, the ensemble
fitted on the same validation window from the raw P its calibration computed (real
training steps on the tiny llama, the real lexical grid on the real Reuters window)."""

from __future__ import annotations

import pytest

from train.config import load_config
from train.lora import train_lora
from classify.registry import AdapterRegistry


def test_a_training_run_publishes_its_ensemble_from_the_calibration_scores(
        tiny_model_dir, reuters_dataset, tmp_path):
    registry = tmp_path / "registry"
    config = [f"base_model={tiny_model_dir}", f"dataset={reuters_dataset}",
              f"registry={registry}", "max_examples=8", "sampling=balanced", "max_steps=1",
              "batch_size=4", "max_prompt_tokens=160", "bf16=false",
              "validation_max_examples=40", "ensemble=true"]
    adapter = train_lora(load_config(None, config))
    versions = AdapterRegistry(registry).list()
    assert len(versions) == 2
    (ensemble,) = [v for v in versions if v.manifest.ensemble is not None]
    spec = ensemble.manifest.ensemble
    assert ensemble.manifest.ensemble_of == adapter.name and adapter.manifest.ensemble is None
    # fitted on the articles the calibration scored, with the same raw P: the adapter
    # alone scores there exactly what its calibration recorded
    assert spec.fitted_on.n == adapter.calibration.fitted_on.n == 40
    assert (spec.fitted_on.date_from, spec.fitted_on.date_to) == (
        adapter.calibration.fitted_on.date_from, adapter.calibration.fitted_on.date_to)
    assert spec.adapter_alone.f1 == pytest.approx(adapter.calibration.after.f1, abs=1e-9)
    assert spec.adapter_alone.ece == pytest.approx(adapter.calibration.after.ece, abs=1e-9)
    assert (ensemble.path / spec.lexical_file).is_file()
    assert (ensemble.path / "adapter_model.safetensors").read_bytes() == (
        adapter.path / "adapter_model.safetensors").read_bytes()


def test_ensemble_needs_a_validation_window(tiny_model_dir, reuters_dataset, tmp_path):
    with pytest.raises(ValueError, match="ensemble: an ensemble is fitted on the validation"):
        load_config(None, [f"base_model={tiny_model_dir}", f"dataset={reuters_dataset}",
                           f"registry={tmp_path}", "validation_days=null", "ensemble=true"])
