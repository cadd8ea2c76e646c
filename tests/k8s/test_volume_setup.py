"""The set-up steps of a fresh data volume, run as rendered: the model-prepare Job's root
step hands a root-owned volume root to the images' user (where fsGroup does not apply),
and does nothing the second time; the Job and vLLM's init container lay out the same
directories the same way."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.k8s.manifests import OUR_IMAGES, pod_templates, read_dockerfile, render


def _container(kustomization: str, owner: str, name: str, init: bool) -> dict:
    [pod] = [p for p in pod_templates(render(kustomization)) if p.owner == owner]
    return next(c for c in pod.spec["initContainers" if init else "containers"]
                if c["name"] == name)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root, as in the pod")
def test_the_ownership_step_hands_a_root_owned_volume_to_the_image_user(tmp_path):
    step = _container("overlays/gpu/jobs", "Job/signals-model-prepare", "volume-ownership",
                      init=True)
    volume = tmp_path / "volume"
    volume.mkdir(mode=0o755)
    os.chown(volume, 0, 0)  # what a fresh NFS/EFS/Filestore export looks like
    script = step["command"][2].replace("/data", str(volume))
    assert step["command"][:2] == ["sh", "-c"]

    subprocess.run(["sh", "-c", script], check=True, timeout=30)
    uid, gid = read_dockerfile(OUR_IMAGES["signals-serve"]).uid_gid
    stat = volume.stat()
    assert (stat.st_uid, stat.st_gid) == (uid, gid)
    assert stat.st_mode & 0o7777 == 0o2775  # group-writable, new entries keep group 100

    # Already right: nothing is changed (a mode set by hand survives the next run).
    volume.chmod(0o2770)
    subprocess.run(["sh", "-c", script], check=True, timeout=30)
    assert volume.stat().st_mode & 0o7777 == 0o2770


def test_the_job_and_the_vllm_init_step_lay_out_the_volume_alike():
    for overlay in ("overlays/cpu-dev", "overlays/gpu"):
        job = _container(f"{overlay}/jobs", "Job/signals-model-prepare", "model-prepare",
                         init=False)
        init = _container(overlay, "Deployment/vllm", "data-layout", init=True)
        assert job["command"] == init["command"]
        assert "$SIGNALS_DATA_DIR/registry" in init["command"][2]
        for container in (job, init):
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["SIGNALS_DATA_DIR"] == "/data"
            mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/data")
            assert not mount.get("readOnly"), "the layout step writes the volume"


def test_vllm_reads_the_volume_read_only_and_the_registry_path_is_the_layout_one():
    for overlay in ("overlays/cpu-dev", "overlays/gpu"):
        engine = _container(overlay, "Deployment/vllm", "vllm", init=False)
        mount = next(m for m in engine["volumeMounts"] if m["mountPath"] == "/data")
        assert mount["readOnly"] is True
        env = {e["name"]: e.get("value") for e in engine["env"]}
        assert Path(env["VLLM_LORA_RESOLVER_CACHE_DIR"]) == Path("/data") / "registry"
