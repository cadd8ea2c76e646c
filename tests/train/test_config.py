import pytest

from train.config import ConfigError, load_config


def _ok(base_model_dir, reuters_dataset):
    return [f"base_model={base_model_dir}", f"dataset={reuters_dataset}"]


def test_yaml_and_overrides(tmp_path, base_model_dir, reuters_dataset):
    path = tmp_path / "c.yaml"
    path.write_text("method: lora\nrank: 8\nlearning_rate: 2.0e-4\n")
    config = load_config(path, _ok(base_model_dir, reuters_dataset) + ["rank=4", "max-steps=3"])
    assert (config.rank, config.learning_rate, config.max_steps) == (4, 2e-4, 3)
    assert config.alpha == 32 and config.dropout == 0.1  # the original work's defaults


@pytest.mark.parametrize("override, field", [
    ("method=ppo", "method"),
    ("rank=0", "rank"),
    ("dropout=1.5", "dropout"),
    ("no_such_field=1", "no_such_field"),
    ("target_modules=[lm_head]", "target_modules"),
])
def test_bad_fields_are_named(base_model_dir, reuters_dataset, override, field):
    with pytest.raises(ConfigError, match=field):
        load_config(None, _ok(base_model_dir, reuters_dataset) + [override])


def test_missing_inputs_are_named(tmp_path, base_model_dir, reuters_dataset):
    with pytest.raises(ConfigError, match="base_model: .*nope"):
        load_config(None, [f"base_model={tmp_path / 'nope'}", f"dataset={reuters_dataset}"])
    with pytest.raises(ConfigError, match="dataset: .*missing"):
        load_config(None, [f"base_model={base_model_dir}", f"dataset={tmp_path / 'missing'}"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="field=value"):
        load_config(None, ["rank"])
