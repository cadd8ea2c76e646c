"""A real LoRA run (few steps) on the real base model, published to a real registry."""

import json

import pytest
from safetensors import safe_open

from classify.registry import AdapterRegistry


def test_adapter_version_layout_and_manifest(trained_adapter, registry_dir, base_model_dir):
    path = trained_adapter.path
    assert path.parent == registry_dir
    for name in ("adapter_config.json", "adapter_model.safetensors", "manifest.json"):
        assert (path / name).is_file(), name
    assert not any(p.name.startswith(".staging") for p in registry_dir.iterdir())
    config = json.loads((path / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (16, 32, 0.1)
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    manifest = trained_adapter.manifest
    assert manifest.method == "lora"
    assert manifest.base_model == base_model_dir.resolve()
    assert manifest.dataset.split == "train"
    assert manifest.dataset.window == ["1987-02-26", "1987-03-26"]
    assert manifest.dataset.examples == 16 and manifest.dataset.signals == 8
    assert manifest.hyperparameters.rank == 16
    assert manifest.metrics.steps == 4 and len(manifest.metrics.loss_curve) == 4
    assert manifest.created_at and manifest.name == trained_adapter.name
    assert AdapterRegistry(registry_dir).get(trained_adapter.name).manifest == manifest


def test_a_copied_registry_and_dataset_resolve_and_serve_from_the_copy(
        trained_adapter, registry_dir, reuters_dataset, base_model_dir, tmp_path):
    """The manifest's dataset path is relative to the registry root, so the data copied
    to another volume points at the copy (the base model here lives outside the data
    dir and stays absolute); the copied adapter answers as the original does."""
    import shutil

    from pipeline.dataset import load_split
    from train.evaluate import Scorer

    stored = json.loads((trained_adapter.path / "manifest.json").read_text())
    assert stored["dataset"]["path"] == f"../{reuters_dataset.parent.name}/reuters-acq"
    volume = tmp_path / "other-volume"
    copied_registry = volume / registry_dir.name
    shutil.copytree(registry_dir, copied_registry)
    shutil.copytree(reuters_dataset, volume / reuters_dataset.parent.name / "reuters-acq")
    copy = AdapterRegistry(copied_registry).get(trained_adapter.name)
    assert copy.path == copied_registry / trained_adapter.name
    assert copy.manifest.dataset.path == (volume / reuters_dataset.parent.name
                                          / "reuters-acq").resolve()
    assert copy.manifest.base_model == base_model_dir.resolve()
    articles = load_split(copy.manifest.dataset.path, "1987-04")[:4]
    original = Scorer(base_model_dir, registry_dir, 192).classify(
        articles, trained_adapter.name)
    copied = Scorer(copy.manifest.base_model, copied_registry, 192).classify(
        articles, copy.name)
    assert [c.p_signal for c in copied] == pytest.approx([o.p_signal for o in original],
                                                         abs=1e-6)
    assert copied[0].threshold == trained_adapter.calibration.threshold


def test_training_changed_the_lora_weights(trained_adapter):
    # peft initialises B to zero; trained B matrices are not.
    with safe_open(trained_adapter.path / "adapter_model.safetensors", "pt") as weights:
        b_keys = [k for k in weights.keys() if "lora_B" in k]
        assert b_keys
        assert all(weights.get_tensor(k).abs().sum() > 0 for k in b_keys)


def test_loss_is_on_the_answer_tokens_only(base_model_dir, reuters_dataset, tokenizer):
    """TRL turns the completion mask into labels: -100 everywhere but label + EOS."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from pipeline.dataset import load_split
    from pipeline.views import sft_token_rows as sft_records

    articles = load_split(reuters_dataset, "train")[:3]
    rows = sft_records(articles, tokenizer, 128)
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(base_model_dir),
        args=SFTConfig(output_dir="/tmp/unused", use_cpu=True, bf16=False, report_to=[],
                       completion_only_loss=True, max_length=None),
        train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    for row, prepared in zip(rows, trainer.train_dataset):
        labels = prepared["labels"]
        assert labels[:-2] == [-100] * (len(labels) - 2)
        assert labels[-2:] == row["input_ids"][-2:]


def test_a_continued_adapter_keeps_its_own_lora_shape(trained_adapter, registry_dir,
                                                      base_model_dir, reuters_dataset):
    """An update config naming other target modules (update.yaml continuing an adapter
    trained with another recipe) takes the shape of the adapter it continues, so the new
    version's manifest says what PeftModel.from_pretrained actually trains."""
    from train.config import load_config
    from train.model import pin_init_adapter

    config = load_config(None, [f"base_model={base_model_dir}", f"dataset={reuters_dataset}",
                                f"registry={registry_dir}", f"init_adapter={trained_adapter.name}",
                                "rank=8", "alpha=8", "target_modules=[q_proj,gate_proj]"])
    pinned = pin_init_adapter(config)
    assert pinned.init_adapter == trained_adapter.name
    assert (pinned.rank, pinned.alpha) == (16, 32)
    assert sorted(pinned.target_modules) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    by_path = pin_init_adapter(config.model_copy(update={"init_adapter": str(trained_adapter.path)}))
    assert by_path.init_adapter == str(trained_adapter.path) and by_path.rank == 16
    same = pin_init_adapter(pinned)
    assert same.model_dump() == pinned.model_dump()
