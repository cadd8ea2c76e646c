"""The typed adapter manifest: relative paths that survive a copy, old manifests that
still load, unknown fields kept, malformed ones named (no model needed)."""

import json
import logging
import shutil

import pytest

from classify.registry import AdapterManifest, AdapterRegistry, InvalidManifest
from classify.manifest import DatasetWindow


def _stage(registry, name):
    staging = registry.staging_dir(name)
    (staging / "adapter_config.json").write_text("{}")
    (staging / "adapter_model.safetensors").write_bytes(b"")


def _data_dir(root):
    """The default layout: registry, datasets and models side by side in a data dir."""
    (root / "datasets" / "reuters-acq").mkdir(parents=True)
    (root / "datasets" / "reuters-acq" / "manifest.json").write_text("{}")
    (root / "models" / "base").mkdir(parents=True)
    return AdapterRegistry(root / "registry")


def _publish(registry, name, manifest):
    _stage(registry, name)
    return registry.publish(name, manifest)


def test_paths_are_stored_relative_and_a_copied_data_dir_resolves_to_itself(tmp_path):
    data = tmp_path / "data"
    registry = _data_dir(data)
    version = _publish(registry, "lora-x", AdapterManifest(
        method="lora", base_model=data / "models" / "base",
        dataset=DatasetWindow(name="reuters-acq", path=data / "datasets" / "reuters-acq",
                              split="train", window=["1987-02-26", "1987-03-26"])))
    stored = json.loads((version.path / "manifest.json").read_text())
    assert stored["base_model"] == "../models/base"
    assert stored["dataset"]["path"] == "../datasets/reuters-acq"
    # in memory (and so in the API's JSON) the paths are absolute
    assert version.manifest.base_model == (data / "models" / "base").resolve()

    copy = tmp_path / "elsewhere" / "volume"
    shutil.copytree(data, copy)
    shutil.rmtree(data)  # nothing may still point at the original
    moved = AdapterRegistry(copy / "registry").get("lora-x")
    assert moved.path == copy / "registry" / "lora-x"
    assert moved.manifest.base_model == (copy / "models" / "base").resolve()
    assert moved.manifest.dataset.path == (copy / "datasets" / "reuters-acq").resolve()
    assert (moved.manifest.dataset.path / "manifest.json").is_file()
    assert moved.manifest.dataset.window == ["1987-02-26", "1987-03-26"]


def test_a_path_outside_the_data_dir_stays_absolute(tmp_path):
    registry = _data_dir(tmp_path / "data")
    outside = tmp_path / "shared-models" / "base"
    version = _publish(registry, "lora-y", AdapterManifest(base_model=outside))
    assert json.loads((version.path / "manifest.json").read_text())["base_model"] == str(outside)
    assert registry.get("lora-y").manifest.base_model == outside


def test_an_old_manifest_with_absolute_paths_and_missing_fields_loads(tmp_path):
    registry = AdapterRegistry(tmp_path / "registry")
    _stage(registry, "old")
    (registry.root / ".staging-old").rename(registry.root / "old")
    old = {"name": "old", "method": "lora", "base_model": "/somewhere/else/SmolLM2",
           "dataset": {"name": "reuters-acq", "path": "/somewhere/else/datasets/reuters-acq",
                       "split": "train"},
           "metrics": {"steps": 4}, "created_at": "2026-01-01T00:00:00+00:00"}
    (registry.root / "old" / "manifest.json").write_text(json.dumps(old))
    version = registry.get("old")
    assert str(version.manifest.base_model) == "/somewhere/else/SmolLM2"
    assert str(version.manifest.dataset.path) == "/somewhere/else/datasets/reuters-acq"
    assert version.calibration is None and version.max_prompt_tokens is None
    assert version.manifest.lora is None and version.manifest.metrics.loss_curve == []
    assert version.prompt_style == "full"  # trained before prompt_style existed
    # the JSON shape is what was read: no fields invented, the timestamp as written
    assert version.manifest.to_json() == old


def test_unknown_fields_are_kept_through_publish_and_copies(tmp_path):
    registry = AdapterRegistry(tmp_path)
    raw = {"method": "lora", "future_field": {"a": [1, 2]},
           "metrics": {"steps": 2, "new_metric": 0.5},
           "hyperparameters": {"max_prompt_tokens": 192, "rank": 16}}
    source = _publish(registry, "src", AdapterManifest.model_validate(raw))
    assert source.max_prompt_tokens == 192 and source.manifest.hyperparameters.rank == 16
    copy = _publish(registry, "copy", source.manifest.model_copy(update={"variant_of": "src"}))
    stored = json.loads((copy.path / "manifest.json").read_text())
    assert stored == {"name": "copy", **raw, "variant_of": "src"}
    assert registry.get("copy").manifest.future_field == {"a": [1, 2]}
    assert registry.get("copy").manifest.metrics.summary() == {"steps": 2, "new_metric": 0.5}


def test_a_malformed_manifest_is_a_clear_error_and_does_not_hide_the_others(tmp_path, caplog):
    registry = AdapterRegistry(tmp_path)
    _publish(registry, "good", AdapterManifest(method="lora"))
    _publish(registry, "bad", AdapterManifest(method="lora"))
    (tmp_path / "bad" / "manifest.json").write_text(json.dumps(
        {"name": "bad", "lora": {"rank": "sixteen"}}))
    _publish(registry, "broken", AdapterManifest())
    (tmp_path / "broken" / "manifest.json").write_text("{not json")
    with pytest.raises(InvalidManifest, match="adapter bad: manifest field 'lora.rank'"):
        registry.get("bad")
    with pytest.raises(InvalidManifest, match="adapter broken: .* is not JSON"):
        registry.get("broken")
    with caplog.at_level(logging.WARNING, logger="classify.registry"):
        assert [v.name for v in registry.list()] == ["good"]
    assert "adapter bad" in caplog.text and "adapter broken" in caplog.text


def test_an_unknown_prompt_style_is_a_malformed_manifest(tmp_path):
    registry = AdapterRegistry(tmp_path)
    short = _publish(registry, "short", AdapterManifest.model_validate(
        {"method": "lora", "hyperparameters": {"prompt_style": "short"}}))
    assert short.prompt_style == "short"
    _publish(registry, "odd", AdapterManifest(method="lora"))
    (tmp_path / "odd" / "manifest.json").write_text(json.dumps(
        {"name": "odd", "hyperparameters": {"prompt_style": "terse"}}))
    with pytest.raises(InvalidManifest, match="adapter odd: manifest field "
                                              "'hyperparameters.prompt_style'"):
        registry.get("odd")


def test_a_path_given_relative_is_the_working_directorys(tmp_path, monkeypatch):
    registry = _data_dir(tmp_path / "data")
    monkeypatch.chdir(tmp_path / "data")
    version = _publish(registry, "lora-z", AdapterManifest(base_model="models/base"))
    assert version.manifest.base_model == (tmp_path / "data" / "models" / "base").resolve()
    assert json.loads((version.path / "manifest.json").read_text())["base_model"] == "../models/base"
    assert registry.get("lora-z").manifest == version.manifest
