"""The `signals` console script, run as a user would."""

import subprocess
import sys
import time

import pytest


def signals(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "signals", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_help_lists_every_command():
    result = signals("--help")
    assert result.returncode == 0
    for command in ("model", "data", "train", "adapters", "serve", "demo"):
        assert command in result.stdout
    for sub in (("model", "prepare"), ("data", "reuters"), ("train",), ("serve",), ("demo",)):
        assert signals(*sub, "--help").returncode == 0, sub


def test_train_fields_shows_every_config_field_with_its_docstring():
    """`signals train --fields METHOD`: the fields' docstrings in train/config.py reach
    the command line, with each field's type and default."""
    from train.config import CONFIGS

    result = signals("train", "--fields", "rlhf")
    assert result.returncode == 0, result.stderr
    names = [line.split(":")[0] for line in result.stdout.splitlines()[2:]
             if line and not line.startswith(" ")]
    assert names == list(CONFIGS["rlhf"].model_fields)
    assert "init_adapter: str = required" in result.stdout
    assert "algorithm: 'rloo' | 'grpo' = 'rloo'" in result.stdout
    assert "zero advantage" in result.stdout  # init_adapter's docstring
    bad = signals("train", "--fields", "ppo")
    assert bad.returncode == 2 and "invalid choice: 'ppo'" in bad.stderr


def test_eval_through_a_vllm_that_is_down_says_so(base_model_dir, reuters_dataset, tmp_path):
    """`signals eval --vllm-url` at a port nobody listens on: one clear line, exit 2 (the CLI's error status), and
    no half-written evaluation."""
    import socket

    with socket.socket() as probe:  # a free port, closed again: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "eval"
    result = signals("eval", "base", "--split", "1987-04", "--limit", "2",
                     "--base-model", str(base_model_dir), "--dataset", str(reuters_dataset),
                     "--registry", str(tmp_path / "registry"), "--out", str(out),
                     "--vllm-url", f"http://127.0.0.1:{port}", timeout=300)
    assert result.returncode == 2, result.stderr
    assert f"vLLM at http://127.0.0.1:{port} is unreachable" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (out / "evaluation.json").exists()


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


def test_signals_serve_end_to_end_and_clean_stop(base_model_dir, registry_dir, trained_adapter,
                                                 tokenizer, tmp_path):
    """`signals serve` starts vLLM + the API, with its settings (here a KV block size of
    64, so 64 tokens of the prompt's fixed 99-token part come from the prefix cache);
    SIGTERM stops both (no orphaned vLLM)."""
    import os
    import signal

    import httpx
    import psutil

    from serve.vllm_server import wait_until_ok
    from tests.conftest import free_port

    port, vllm_port = free_port(), free_port()
    env = {**os.environ, "SIGNALS_SERVE_BASE_MODEL": str(base_model_dir),
           "SIGNALS_SERVE_REGISTRY": str(registry_dir), "SIGNALS_SERVE_ADMIN_TOKEN": "t0k",
           "SIGNALS_SERVE_MAX_LORAS": "2", "SIGNALS_SERVE_VLLM_BLOCK_SIZE": "64"}
    server = subprocess.Popen([sys.executable, "-m", "signals", "serve", "--port", str(port),
                               "--vllm-port", str(vllm_port)], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ok(f"{url}/ready", 420, server, "signals serve")
        loaded = httpx.post(f"{url}/v1/adapters/{trained_adapter.name}/load", timeout=120,
                            headers={"Authorization": "Bearer t0k"})
        assert loaded.status_code == 200, loaded.text
        response = httpx.post(f"{url}/v1/classify", timeout=120, json={
            "article": {"id": 1, "title": "Acme to buy Beta", "text": "Acme agreed to buy Beta."},
            "adapter": trained_adapter.name})
        assert response.status_code == 200, response.text
        assert response.json()["results"][0]["adapter"] == trained_adapter.name
        assert httpx.get(f"http://127.0.0.1:{vllm_port}/health").status_code == 200
        cached = []
        for title in ("Gamma unit sold", "Delta shares fell"):  # the same instruction first
            completion = httpx.post(f"http://127.0.0.1:{vllm_port}/v1/completions",
                                    timeout=120, json={"model": "base", "max_tokens": 1,
                                                       "prompt": _prompt_ids(title, tokenizer)})
            assert completion.status_code == 200, completion.text
            cached.append(completion.json()["usage"]["prompt_tokens_details"]["cached_tokens"])
        assert cached[1] == 64, cached
        # SIGNALS_SERVE_VLLM_CPUS=all (the default): vLLM's OpenMP threads are pinned one
        # per core to every core this process may use (vLLM alone keeps one for its
        # front end: on 2 cores its model computes on one).
        cores = sorted(os.sched_getaffinity(0))
        pinned = set()
        for process in psutil.Process(server.pid).children(recursive=True):
            for thread in process.threads():
                allowed = os.sched_getaffinity(thread.id)
                if len(allowed) == 1:
                    pinned |= allowed
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(120)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{vllm_port}/health", timeout=5)
    log = (registry_dir.parent / "logs" / f"vllm-{vllm_port}.log").read_text()
    assert pinned == set(cores), pinned
    assert f"model worker on cores {','.join(map(str, cores))}" in log


def test_adapters_promote_show_and_list(tmp_path):
    """Registry commands on a real registry directory (no model needed)."""
    from classify.registry import AdapterManifest, AdapterRegistry

    registry = AdapterRegistry(tmp_path)
    staging = registry.staging_dir("lora-x-1")
    (staging / "adapter_config.json").write_text("{}")
    (staging / "adapter_model.safetensors").write_bytes(b"")
    registry.publish("lora-x-1", AdapterManifest(method="lora", created_at="2026-11-21T00:00:00"))
    result = signals("adapters", "promote", "lora-x-1", "--alias", "production",
                     "--registry", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert registry.aliases() == {"production": "lora-x-1"}
    shown = signals("adapters", "show", "production", "--registry", str(tmp_path))
    assert shown.returncode == 0 and '"name": "lora-x-1"' in shown.stdout
    assert "lora-x-1" in signals("adapters", "list", "--registry", str(tmp_path)).stdout
    missing = signals("adapters", "promote", "lora-nope", "--registry", str(tmp_path))
    assert missing.returncode == 2 and "lora-nope" in missing.stderr


def _prompt_ids(title: str, tokenizer) -> list[int]:
    """The product's prompt for a one-line article, as token ids."""
    from pipeline.article import Article
    from pipeline.prompt import encode_prompt

    return encode_prompt(Article(id=title, title=title, text=title), tokenizer,
                         512).token_ids
