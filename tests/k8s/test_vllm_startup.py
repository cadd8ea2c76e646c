"""The vLLM container of the cpu-dev overlay, as rendered, comes up on a fresh volume.

The rendered pod is replayed here with the project's environment in place of the image's:
its init container (the volume layout and `signals model prepare`) runs against an empty
directory standing for /data, the directory is then made read-only (the engine mounts
/data readOnly), and the engine's command, arguments and environment start vLLM, which
must answer /health and pass the pod's own startup probe (a real completion). A control
run without the init step shows what the test catches: vLLM's filesystem LoRA resolver
refuses to start when VLLM_LORA_RESOLVER_CACHE_DIR does not exist. The same resolver is
how every replica serves a registry version it was never asked to load.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.k8s.manifests import render

pytestmark = pytest.mark.vllm

CONTAINER_PORT = "8000"
API_KEY = "test-key-from-the-signals-api-secret"


def _vllm_pod() -> dict:
    return next(o for o in render("overlays/cpu-dev") if o["kind"] == "Deployment"
                and o["metadata"]["name"] == "vllm")["spec"]["template"]["spec"]


class PodOnThisMachine:
    """Maps a pod's mount paths to local directories and its container port to a free one."""

    def __init__(self, pod: dict, root: Path, port: int):
        self.mounts = {"/data": root / "data", "/tmp": root / "tmp"}
        for path in self.mounts.values():
            path.mkdir(parents=True, exist_ok=True)
        self.port = port

    def path(self, value: str) -> str:
        for mount, local in self.mounts.items():
            if value == mount or value.startswith(mount + "/"):
                return str(local) + value[len(mount):]
        return value

    def command(self, container: dict) -> list[str]:
        mapped = [self.path(part) for part in [*container["command"],
                                                *container.get("args", [])]]
        if mapped[0] in ("python", "python3"):
            # the project's venv stands in for the image's; set after the mapping, so a
            # checkout under /tmp is not taken for the pod's /tmp mount
            mapped[0] = sys.executable
        if "--port" in mapped:
            mapped[mapped.index("--port") + 1] = str(self.port)
        if "--host" in mapped:
            mapped[mapped.index("--host") + 1] = "127.0.0.1"
        return mapped

    def env(self, container: dict, secrets: dict[str, str]) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        for entry in container.get("env", []):
            if "value" in entry:
                env[entry["name"]] = self.path(entry["value"])
            elif (ref := entry["valueFrom"].get("secretKeyRef")) is not None:
                key = f"{ref['name']}/{ref['key']}"
                if key in secrets:
                    env[entry["name"]] = secrets[key]
                else:
                    assert ref.get("optional"), f"{entry['name']}: Secret {key} required"
                    env.pop(entry["name"], None)
        env["OMP_NUM_THREADS"] = "1"
        return env


def _make_read_only(root: Path) -> None:
    for directory, subdirs, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    for directory, _, _ in sorted(os.walk(root), key=lambda entry: -len(entry[0])):
        path = Path(directory)
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _make_writable(root: Path) -> None:
    for directory, _, files in os.walk(root):
        Path(directory).chmod(0o755)
        for name in files:
            (Path(directory) / name).chmod(0o644)


def _health(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as reply:
            return reply.status
    except (urllib.error.URLError, OSError):
        return None


def _write_lora_adapter(model_dir: Path, out: Path) -> None:
    """A real (freshly initialised) LoRA adapter of the served base model, as training
    publishes one into the registry: adapter_config.json names the base model's path."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    get_peft_model(base, config).save_pretrained(out)


def _complete(port: int, model: str, key: str | None) -> int:
    body = json.dumps({"model": model, "prompt": "Acme buys Beta.", "max_tokens": 1})
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions",
                                     data=body.encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code


def test_vllm_container_comes_up_on_a_fresh_read_only_volume(tmp_path):
    pod = _vllm_pod()
    [init] = [c for c in pod["initContainers"] if c["name"] == "data-layout"]
    [engine] = [c for c in pod["containers"] if c["name"] == "vllm"]
    assert {m["mountPath"]: m.get("readOnly", False) for m in engine["volumeMounts"]}["/data"]
    secrets = {"signals-api/vllm-api-key": API_KEY}

    local = PodOnThisMachine(pod, tmp_path, free_port())
    data = local.mounts["/data"]
    assert not any(data.iterdir()), "the volume starts empty"

    # 1. The init container, exactly as rendered (sh -c ... signals model prepare).
    prepared = subprocess.run(local.command(init), env=local.env(init, secrets),
                              capture_output=True, text=True, timeout=600)
    assert prepared.returncode == 0, prepared.stdout[-2000:] + prepared.stderr[-3000:]
    assert (data / "registry").is_dir() and (data / "datasets").is_dir()
    model = Path(local.path(engine["args"][0]))
    assert (model / "config.json").is_file(), f"the init step did not prepare {model}"
    # A registry version published later, by training (before the engine starts here, so
    # the volume can be read-only for the whole run).
    adapter = "lora-published-by-training"
    _write_lora_adapter(model, data / "registry" / adapter)
    registry_before = sorted(p.name for p in (data / "registry").rglob("*"))

    # 2. The engine sees /data read-only.
    _make_read_only(data)
    log = tmp_path / "vllm.log"
    try:
        with log.open("w") as out:
            engine_process = subprocess.Popen(local.command(engine),
                                              env=local.env(engine, secrets),
                                              stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 420
            while _health(local.port) != 200:
                assert engine_process.poll() is None, \
                    f"vLLM exited ({engine_process.returncode}):\n{log.read_text()[-4000:]}"
                assert time.monotonic() < deadline, log.read_text()[-4000:]
                time.sleep(2)
            # The pod's own startup probe: a real completion, carrying the Secret's key.
            probe = [sys.executable if part == "python3" else part
                     for part in engine["startupProbe"]["exec"]["command"]]
            probe = [part.replace(f"127.0.0.1:{CONTAINER_PORT}", f"127.0.0.1:{local.port}")
                     for part in probe]
            passed = subprocess.run(probe, env=local.env(engine, secrets),
                                    capture_output=True, text=True, timeout=120)
            assert passed.returncode == 0, passed.stderr[-2000:]
            # Without the key vLLM's /v1 routes (adapter load/unload included) refuse.
            request = urllib.request.Request(
                f"http://127.0.0.1:{local.port}/v1/unload_lora_adapter",
                data=b'{"lora_name": "x"}', headers={"Content-Type": "application/json"})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=10)
            assert refused.value.code == 401
            # Every replica serves every registry version without a load call: the
            # filesystem resolver loads it by name on first use; unknown names fail.
            assert _complete(local.port, adapter, API_KEY) == 200
            assert _complete(local.port, "lora-no-such-version", API_KEY) in (400, 404)
            assert _complete(local.port, adapter, None) == 401
            assert sorted(p.name for p in (data / "registry").rglob("*")) == registry_before
        finally:
            engine_process.terminate()
            try:
                engine_process.wait(60)
            except subprocess.TimeoutExpired:
                engine_process.kill()
                engine_process.wait(30)
    finally:
        _make_writable(data)


def test_without_the_init_step_vllm_refuses_to_start(tmp_path, base_model_dir):
    """The control: the model is there, registry/ is not (a fresh volume before any
    training), and the rendered engine command fails at start-up."""
    pod = _vllm_pod()
    [engine] = [c for c in pod["containers"] if c["name"] == "vllm"]
    local = PodOnThisMachine(pod, tmp_path, free_port())
    model = Path(local.path(engine["args"][0]))
    model.parent.mkdir(parents=True)
    model.symlink_to(base_model_dir, target_is_directory=True)
    result = subprocess.run(local.command(engine), env=local.env(engine, {}),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "VLLM_LORA_RESOLVER_CACHE_DIR must be set to a valid directory" in \
        result.stdout + result.stderr, (result.stdout + result.stderr)[-3000:]
