"""The `signals` console script, run as a user would."""

import subprocess
import sys
import time


def signals(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "serve.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_help_lists_every_command():
    result = signals("--help")
    assert result.returncode == 0
    for command in ("model", "data", "train", "adapters", "serve", "demo"):
        assert command in result.stdout
    for sub in (("model", "prepare"), ("data", "reuters"), ("train",), ("serve",), ("demo",)):
        assert signals(*sub, "--help").returncode == 0, sub


def test_model_prepare_is_idempotent(base_model_dir):
    started = time.monotonic()
    result = signals("model", "prepare", "--out", str(base_model_dir))
    assert result.returncode == 0, result.stderr
    assert "134.5M parameters" in result.stdout and "'1'=" in result.stdout
    assert time.monotonic() - started < 60  # verified, not rebuilt (a rebuild de-quantises)


def test_data_reuters_prints_the_windows(reuters_dir, tmp_path):
    result = signals("data", "reuters", "--reuters-dir", str(reuters_dir),
                     "--out", str(tmp_path / "ds"))
    assert result.returncode == 0, result.stderr
    assert "1987-04" in result.stdout and "3255" in result.stdout


def test_bad_training_config_fails_fast_naming_the_field(base_model_dir, reuters_dataset):
    started = time.monotonic()
    result = signals("train", "--set", f"base_model={base_model_dir}",
                     "--set", f"dataset={reuters_dataset}", "--set", "rank=0")
    assert result.returncode == 2
    assert "rank" in result.stderr and "greater than or equal to 1" in result.stderr
    assert time.monotonic() - started < 60


def test_missing_reuters_dir_is_a_clear_error(tmp_path):
    result = signals("data", "reuters", "--reuters-dir", str(tmp_path), "--out",
                     str(tmp_path / "ds"))
    assert result.returncode == 2 and "reut2-*.sgm" in result.stderr
