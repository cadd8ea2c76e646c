import pytest

from train.config import ConfigError, LoraPlusTrainConfig, QLoraTrainConfig, TrainConfig, load_config


def _ok(base_model_dir, reuters_dataset):
    return [f"base_model={base_model_dir}", f"dataset={reuters_dataset}"]


def test_yaml_and_overrides(tmp_path, base_model_dir, reuters_dataset):
    path = tmp_path / "c.yaml"
    path.write_text("method: lora\nrank: 8\nlearning_rate: 2.0e-4\n")
    config = load_config(path, _ok(base_model_dir, reuters_dataset) + ["rank=4", "max-steps=3"])
    assert (config.rank, config.learning_rate, config.max_steps) == (4, 2e-4, 3)
    assert config.alpha == 32 and config.dropout == 0.1  # the original work's defaults


def test_method_picks_the_config_class(base_model_dir, reuters_dataset):
    ok = _ok(base_model_dir, reuters_dataset)
    plus = load_config(None, ok + ["method=loraplus"])
    assert isinstance(plus, LoraPlusTrainConfig) and plus.loraplus_lr_ratio == 16
    qlora = load_config(None, ok + ["method=qlora"])
    assert isinstance(qlora, QLoraTrainConfig) and qlora.load_in_4bit is True
    dpo = load_config(None, ok + ["method=dpo"])
    assert dpo.beta == 0.1 and dpo.learning_rate == 5e-5


def test_every_shipped_config_validates(base_model_dir, reuters_dataset):
    from pathlib import Path

    from train.experiment import load_experiment_config

    configs = sorted((Path(__file__).parents[2] / "train" / "configs").glob("*.yaml"))
    methods, experiments = set(), []
    for path in configs:
        if path.name.startswith("experiment"):  # the method comparisons
            experiments.append(load_experiment_config(path, _ok(base_model_dir, reuters_dataset)))
            continue
        methods.add(load_config(path, _ok(base_model_dir, reuters_dataset)).method)
    assert methods == {"lora", "loraplus", "qlora", "dpo", "rlhf"}
    assert sorted(e.eval_per_split is None for e in experiments) == [False, True]  # -full: whole windows


def test_default_paths_reach_a_ray_worker_as_absolute_paths(base_model_dir, reuters_dataset,
                                                            tmp_path, monkeypatch):
    """A Ray Train worker runs in its own working directory and gets the config as JSON:
    a default path left relative (the registry's data/registry) failed validation there,
    so `signals train` on the default paths never trained under Ray."""
    from pathlib import Path

    from train.config import validate_config

    config = load_config(None, _ok(base_model_dir, reuters_dataset))
    sent = config.model_dump(mode="json")
    assert all(Path(sent[f]).is_absolute() for f in ("base_model", "dataset", "registry"))
    monkeypatch.chdir(tmp_path)  # the worker's side
    assert validate_config(sent).registry == config.registry


def test_gradient_checkpointing_is_off_unless_asked(base_model_dir, reuters_dataset, tmp_path):
    """TRL's SFT turns it on by default; here it cost 1.04-1.40x per step for no need."""
    from trl import SFTConfig

    from train.trainer import RunContext, trainer_arguments

    for override, expected in (([], False), (["gradient_checkpointing=true"], True)):
        config = load_config(None, _ok(base_model_dir, reuters_dataset) + override)
        args = SFTConfig(**trainer_arguments(config, RunContext(), tmp_path))
        assert args.gradient_checkpointing is expected


@pytest.mark.parametrize("override, field", [
    ("method=ppo", "method"),
    ("rank=0", "rank"),
    ("dropout=1.5", "dropout"),
    ("no_such_field=1", "no_such_field"),
    ("target_modules=[lm_head]", "target_modules"),
    ("loraplus_lr_ratio=16", "loraplus_lr_ratio"),  # not a field of plain lora
])
def test_bad_fields_are_named(base_model_dir, reuters_dataset, override, field):
    with pytest.raises(ConfigError, match=field):
        load_config(None, _ok(base_model_dir, reuters_dataset) + [override])


def test_rlhf_needs_an_sft_start_and_whole_groups(base_model_dir, reuters_dataset):
    ok = _ok(base_model_dir, reuters_dataset) + ["method=rlhf"]
    with pytest.raises(ConfigError, match="init_adapter"):
        load_config(None, ok)
    with pytest.raises(ConfigError, match="batch_size: 6 must be a multiple of num_generations"):
        load_config(None, ok + ["init_adapter=x", "batch_size=6", "num_generations=4"])


def test_missing_inputs_are_named(tmp_path, base_model_dir, reuters_dataset):
    with pytest.raises(ConfigError, match="base_model: .*nope"):
        load_config(None, [f"base_model={tmp_path / 'nope'}", f"dataset={reuters_dataset}"])
    with pytest.raises(ConfigError, match="dataset: .*missing"):
        load_config(None, [f"base_model={base_model_dir}", f"dataset={tmp_path / 'missing'}"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="field=value"):
        load_config(None, ["rank"])


def test_bad_config_fails_before_any_work(tmp_path, base_model_dir, reuters_dataset):
    """`signals train` answers a bad config with exit 2 and the field, and writes nothing."""
    import subprocess
    import sys

    registry = tmp_path / "registry"
    for override, field in [("method=ppo", "method"), ("rank=0", "rank"),
                            (f"dataset={tmp_path / 'none'}", "dataset"),
                            (f"base_model={tmp_path / 'no-model'}", "base_model")]:
        args = [f"base_model={base_model_dir}", f"dataset={reuters_dataset}",
                f"registry={registry}", override]
        done = subprocess.run(
            [sys.executable, "-m", "signals", "train", *sum((["--set", a] for a in args), [])],
            capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert field in done.stderr and "Traceback" not in done.stderr
    assert not registry.exists()


def test_experiment_derives_each_run_from_one_typed_config(base_model_dir, reuters_dataset,
                                                           tmp_path):
    from train.config import DpoTrainConfig, RlhfTrainConfig, derive_config
    from train.experiment import ExperimentConfig, shared_train_config

    experiment = ExperimentConfig(base_model=base_model_dir, dataset=reuters_dataset,
                                  registry=tmp_path / "registry", train_examples=48,
                                  batch_size=4, seed=7)
    shared = shared_train_config(experiment)
    assert (shared.method, shared.max_examples, shared.batch_size, shared.seed,
            shared.save_steps) == ("lora", 48, 4, 7, 10)
    dpo = derive_config(shared, method="dpo", init_adapter="lora-x", max_steps=3, beta=0.2)
    assert isinstance(dpo, DpoTrainConfig)
    assert (dpo.beta, dpo.max_steps, dpo.init_adapter, dpo.seed) == (0.2, 3, "lora-x", 7)
    assert dpo.learning_rate == 5e-5  # DPO's own default, not LoRA's
    rlhf = derive_config(shared, method="rlhf", init_adapter="lora-x", num_generations=2)
    assert isinstance(rlhf, RlhfTrainConfig) and rlhf.num_generations == 2
    assert shared.method == "lora" and shared.max_steps is None  # the template is untouched
    with pytest.raises(ConfigError, match="rank"):
        derive_config(shared, rank=0)  # validated again, like a loaded config
    with pytest.raises(ConfigError, match="init_adapter"):
        derive_config(shared, method="rlhf")  # RLHF needs an SFT start


def test_one_set_parser_for_training_and_experiment_configs(tmp_path):
    from train.experiment import load_experiment_config

    for bad in ("sft_steps", "=3"):
        with pytest.raises(ConfigError, match="field=value"):
            load_experiment_config(None, [bad])
        with pytest.raises(ConfigError, match="field=value"):
            load_config(None, [bad])
    config = load_experiment_config(None, ["sft-steps=3", "methods=[lora]"])
    assert config.sft_steps == 3 and config.methods == ["lora"]


def test_bf16_defaults_to_what_the_hardware_computes_natively(tmp_path):
    """bf16 None follows the machine (autocast on a CPU without native bfloat16 was
    tens of times slower than float32); True/False are kept as given."""
    from classify.backends import native_bf16
    from train.model import use_bf16

    base = TrainConfig.model_construct(method="lora", bf16=None)
    assert use_bf16(base) is native_bf16()
    assert use_bf16(base.model_copy(update={"bf16": True})) is True
    assert use_bf16(base.model_copy(update={"bf16": False})) is False


def test_one_method_table_names_each_config_and_its_trainer():
    """Methods were listed four times (METHODS, the union, the job runner's if-chain,
    error messages); every one is now read from ``train.config.CONFIGS``."""
    from train.config import CONFIGS, METHODS
    from train.jobs import method_function

    assert METHODS == tuple(CONFIGS) == ("lora", "loraplus", "qlora", "dpo", "rlhf")
    for method, config_class in CONFIGS.items():
        assert config_class.model_fields["method"].default == method
        trainer = method_function(method)
        assert callable(trainer) and trainer.__name__ == config_class.trainer.split(":")[1]
    with pytest.raises(ValueError, match="known: lora, loraplus, qlora, dpo, rlhf"):
        method_function("ppo")
