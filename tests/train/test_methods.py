"""Every method runs real optimiser steps (tiny random llama, real tokenizer, real
Reuters articles), publishes a complete adapter, and that adapter loads in the
in-process backend and changes its answers."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from train.config import load_config


def _weights(version) -> dict[str, torch.Tensor]:
    return load_file(version.path / "adapter_model.safetensors")


def _changed(a: dict, b: dict) -> bool:
    assert a.keys() == b.keys()
    return any(not torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def sft_adapter(tiny_model_dir, reuters_dataset, tmp_path_factory):
    from train.lora import train_lora

    registry = tmp_path_factory.mktemp("methods-registry")
    config = load_config(None, [
        f"base_model={tiny_model_dir}", f"dataset={reuters_dataset}", f"registry={registry}",
        "max_examples=8", "sampling=balanced", "max_steps=2", "batch_size=4",
        "max_prompt_tokens=160", "bf16=false", "validation_max_examples=16"])
    return train_lora(config)


def test_lora_manifest(sft_adapter, tiny_model_dir):
    m = sft_adapter.manifest
    assert m.method == "lora" and m.metrics.steps == 2
    assert len(m.metrics.loss_curve) == 2 and m.tokens_seen > 0
    assert m.base_model == tiny_model_dir.resolve()
    assert m.dataset.window == ["1987-02-26", "1987-03-26"]
    assert m.hyperparameters.learning_rate == 1e-3 and m.wall_time_s > 0
    assert any(v.abs().sum() > 0 for k, v in _weights(sft_adapter).items() if "lora_B" in k)
    # calibrated on the held-out last 5 days of March, after training
    calibration = sft_adapter.calibration
    window = calibration.fitted_on
    assert (str(window.date_from), str(window.date_to)) == ("1987-03-27", "1987-03-31")
    assert window.n == 16 and window.split == "train"
    assert window.base_rate == pytest.approx(window.signals / 16)
    assert 0.0 <= calibration.threshold <= 1.0 and calibration.method == "platt"


def test_validation_window_is_never_trained_on(tiny_model_dir, reuters_dataset, tmp_path):
    from datetime import date

    from train.data import load_training_data
    from pipeline.dataset import publication_day as published_day

    config = load_config(None, [
        f"base_model={tiny_model_dir}", f"dataset={reuters_dataset}", f"registry={tmp_path}",
        "validation_days=5"])
    data = load_training_data(config)
    assert data.window == ("1987-02-26", "1987-03-26")
    assert max(published_day(a) for a in data.examples) == date(1987, 3, 26)
    held_out = data.validation.articles
    assert len(held_out) == 1047 and sum(a.signal for a in held_out) == 189
    assert min(published_day(a) for a in held_out) >= date(1987, 3, 27)
    assert not {a.id for a in held_out} & {a.id for a in data.examples}
    assert len(data.examples) == 8269 - 1047
    no_window = load_training_data(config.model_copy(update={"validation_days": None}))
    assert no_window.validation is None and len(no_window.examples) == 8269


def test_loraplus_gives_b_its_higher_learning_rate(tiny_model_dir, reuters_dataset, tmp_path):
    """The optimiser's groups carry lr x 16 for every B matrix, and B moves further."""
    from peft import get_peft_model

    from train.model import load_base_model, lora_config
    from train.loraplus import loraplus_optimizer, train_loraplus

    config = load_config(None, [
        f"base_model={tiny_model_dir}", f"dataset={reuters_dataset}",
        f"registry={tmp_path}", "method=loraplus", "learning_rate=1e-3", "bf16=false", "validation_max_examples=16"])
    model = get_peft_model(load_base_model(config), lora_config(config))
    optimizer = loraplus_optimizer(model, config)
    names = {id(p): n for n, p in model.named_parameters()}
    lr_of = {names[id(p)]: g["lr"] for g in optimizer.param_groups for p in g["params"]}
    b = {n: lr for n, lr in lr_of.items() if "lora_B" in n}
    a = {n: lr for n, lr in lr_of.items() if "lora_A" in n}
    assert b and a and len(b) == len(a)
    assert all(lr == pytest.approx(16e-3) for lr in b.values())
    assert all(lr == pytest.approx(1e-3) for lr in a.values())

    version = train_loraplus(load_config(None, [
        f"base_model={tiny_model_dir}", f"dataset={reuters_dataset}", f"registry={tmp_path}",
        "method=loraplus", "max_examples=8", "sampling=balanced", "max_steps=2",
        "batch_size=4", "max_prompt_tokens=160", "bf16=false", "validation_max_examples=16"]))
    assert version.manifest.method == "loraplus"
    assert version.manifest.hyperparameters.loraplus_lr_ratio == 16


def test_a_short_prompt_adapter_is_calibrated_and_served_with_its_own_prompts(
        sft_adapter, tiny_model_dir, reuters_dataset):
    """prompt_style=short lands in the manifest; calibration, evaluation and the API all
    render that adapter's prompts with the short instruction (and the base, and older
    adapters, with the full one); continuing it with the other style is refused."""
    from pipeline.dataset import load_split
    from train.dpo import train_dpo
    from train.evaluate import Scorer
    from train.lora import train_lora
    from classify.validation import raw_p_signal

    registry = sft_adapter.path.parent
    version = train_lora(load_config(None, [
        f"base_model={tiny_model_dir}", f"dataset={reuters_dataset}", f"registry={registry}",
        "prompt_style=short", "max_examples=8", "sampling=balanced", "max_steps=2",
        "batch_size=4", "max_prompt_tokens=96", "bf16=false", "validation_max_examples=16",
        "learning_rate=1e-2"]))
    assert version.manifest.hyperparameters.prompt_style == "short"
    assert version.prompt_style == "short" and sft_adapter.prompt_style == "full"
    articles = load_split(reuters_dataset, "1987-04")[:6]
    scorer = Scorer(tiny_model_dir, registry, 512)
    served = scorer.classify(articles, version.name)
    short = raw_p_signal(tiny_model_dir, version.path, articles, 96, style="short")
    full = raw_p_signal(tiny_model_dir, version.path, articles, 160, style="full")
    assert [c.p_raw for c in served] == pytest.approx(short, abs=1e-5)
    assert max(abs(a - b) for a, b in zip(short, full)) > 1e-4
    assert [c.p_signal for c in served] == pytest.approx(
        [version.calibration.apply(p) for p in short], abs=1e-5)
    scorer.close()
    with pytest.raises(ValueError, match="trained with prompt_style 'short'"):
        train_dpo(load_config(None, [
            f"base_model={tiny_model_dir}", f"dataset={reuters_dataset}",
            f"registry={registry}", "method=dpo", f"init_adapter={version.name}",
            "max_examples=8", "max_steps=1", "batch_size=4", "max_prompt_tokens=96",
            "bf16=false", "validation_days=null"]))


def test_dpo_from_the_sft_adapter(sft_adapter, tiny_model_dir, reuters_dataset, capfd):
    from train.dpo import train_dpo

    version = train_dpo(load_config(None, [
        f"base_model={tiny_model_dir}", f"dataset={reuters_dataset}",
        f"registry={sft_adapter.path.parent}", "method=dpo", f"init_adapter={sft_adapter.name}",
        "max_examples=8", "sampling=balanced", "max_steps=2", "batch_size=4",
        "max_prompt_tokens=160", "bf16=false", "validation_max_examples=16", "learning_rate=1e-2"]))
    m = version.manifest
    assert m.method == "dpo" and m.init_adapter == sft_adapter.name
    assert m.metrics.steps == 2 and len(m.metrics.reward_accuracy_curve) == 2
    # Only the trained adapter is saved (not TRL's frozen "ref" copy), and it moved.
    weights = _weights(version)
    assert not any(".ref." in k for k in weights)
    assert _changed(weights, _weights(sft_adapter))
    _assert_one_progress_bar(capfd.readouterr().err, "dpo training", "loss")


def test_dpo_with_the_chosen_answers_likelihood_added_rpo(sft_adapter, tiny_model_dir,
                                                          reuters_dataset):
    """loss_type [sigmoid, sft]: at the first step the policy is its reference, so DPO's
    own loss is exactly log 2; the first logged loss is that plus the chosen answer's
    negative log-likelihood, and the manifest records the losses used."""
    import math

    from train.dpo import train_dpo

    def run(*extra):
        return train_dpo(load_config(None, [
            f"base_model={tiny_model_dir}", f"dataset={reuters_dataset}",
            f"registry={sft_adapter.path.parent}", "method=dpo",
            f"init_adapter={sft_adapter.name}", "max_examples=8", "sampling=balanced",
            "max_steps=1", "batch_size=4", "max_prompt_tokens=160", "bf16=false",
            "validation_days=null", *extra])).manifest

    plain, rpo = run(), run("loss_type=[sigmoid, sft]", "loss_weights=[1.0, 1.0]")
    assert plain.metrics.first_loss == pytest.approx(math.log(2), abs=1e-3)
    assert rpo.metrics.first_loss > math.log(2) + 0.01
    assert rpo.hyperparameters.model_dump()["loss_type"] == ["sigmoid", "sft"]


def _assert_one_progress_bar(err: str, description: str, key: str) -> None:
    """The run showed a progress bar with its loss (or reward), not raw trainer dicts."""
    assert description in err and f"{key}=" in err and "2/2" in err, err[-2000:]
    assert "'train_runtime'" not in err and f"'{key}':" not in err


def test_rlhf_reward_model_then_rloo(sft_adapter, tiny_model_dir, reuters_dataset, capfd):
    from train.rlhf import train_rlhf

    version = train_rlhf(load_config(None, [
        f"base_model={tiny_model_dir}", f"dataset={reuters_dataset}",
        f"registry={sft_adapter.path.parent}", "method=rlhf", f"init_adapter={sft_adapter.name}",
        "max_examples=8", "sampling=balanced", "max_steps=2", "reward_steps=2",
        "num_generations=2", "batch_size=4", "max_prompt_tokens=160", "bf16=false", "validation_max_examples=16",
        "learning_rate=1e-2"]))
    m = version.manifest
    assert m.method == "rlhf" and m.algorithm == "rloo"
    assert m.metrics.steps == 2 and len(m.metrics.reward_curve) == 2
    assert m.metrics.reward_model["steps"] == 2
    assert (version.path / "reward_model" / "adapter_config.json").is_file()
    assert _changed(_weights(version), _weights(sft_adapter))
    err = capfd.readouterr().err
    _assert_one_progress_bar(err, "reward model training", "loss")
    _assert_one_progress_bar(err, "rloo training", "reward")


def test_qlora_trains_on_a_4bit_base(tiny_model_dir, reuters_dataset, tmp_path):
    import bitsandbytes as bnb
    from peft import get_peft_model

    from train.model import load_base_model, lora_config
    from train.lora import train_lora

    config = load_config(None, [
        f"base_model={tiny_model_dir}", f"dataset={reuters_dataset}", f"registry={tmp_path}",
        "method=qlora", "max_examples=8", "sampling=balanced", "max_steps=2", "batch_size=4",
        "max_prompt_tokens=160", "bf16=false", "validation_max_examples=16", "learning_rate=1e-2"])
    model = get_peft_model(load_base_model(config), lora_config(config))
    quantised = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantised, "the base's linear layers should be 4-bit"
    version = train_lora(config)
    assert version.manifest.hyperparameters.load_in_4bit is True
    assert any(v.abs().sum() > 0 for k, v in _weights(version).items() if "lora_B" in k)


def test_adapters_load_in_the_in_process_backend(sft_adapter, tiny_model_dir, reuters_dataset):
    """Every published adapter in the registry answers, and differently from the base."""
    from pipeline.dataset import load_split
    from train.evaluate import Scorer
    from classify.registry import AdapterRegistry

    articles = [a for a in load_split(reuters_dataset, "1987-04")[:6]]
    scorer = Scorer(tiny_model_dir, sft_adapter.path.parent, 160)
    base = scorer.p_signal(articles, None)
    versions = AdapterRegistry(sft_adapter.path.parent).list()
    assert {v.manifest.method for v in versions} >= {"lora"}
    for version in versions:
        p = scorer.p_signal(articles, version.name)
        assert all(0.0 < x < 1.0 for x in p)
        assert p != base, version.name


def test_training_shows_one_progress_bar_with_the_loss(tiny_overrides, capfd):
    from train.lora import train_lora

    train_lora(load_config(None, tiny_overrides + ["validation_days=null"]))
    _assert_one_progress_bar(capfd.readouterr().err, "lora training", "loss")
