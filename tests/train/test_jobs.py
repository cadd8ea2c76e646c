"""Training as Ray jobs: Ray Train resumes an interrupted run from its checkpoint, and
`signals train` submitted with `ray job submit` to a running cluster trains
data-parallel on two workers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port
from train.config import load_config

pytestmark = pytest.mark.slow


def test_interrupted_ray_train_run_resumes_from_its_checkpoint(tiny_overrides, tmp_path):
    """The worker is killed at step 3; Ray restarts it from the step-2 checkpoint, and the
    run ends exactly where an uninterrupted run ends."""
    from train.jobs import run_training

    overrides = tiny_overrides + ["max_examples=16", "max_steps=4", "save_steps=2"]
    config = load_config(None, overrides)
    resumed = run_training(config, workers=1, fail_once_at_step=3,
                           storage_path=tmp_path / "ray_results")
    assert (tmp_path / "ray_results" / resumed.name / "scratch" / "failed-rank0").read_text() == "3"
    assert resumed.manifest.resumed_from_step == 2
    assert resumed.manifest.metrics.steps == 4

    import ray

    ray.shutdown()  # the local Ray run_training started; later tests start their own
    straight = run_training(config, local=True)
    assert straight.manifest.resumed_from_step is None
    assert resumed.manifest.metrics.loss_curve == pytest.approx(
        straight.manifest.metrics.loss_curve, abs=1e-4)


def in_fresh_process(function: str, **kwargs) -> object:
    """``function(**kwargs)`` of this module run in a new Python process; its JSON result.

    A Ray driver keeps per-process state: after this process has started and shut down a
    local Ray (the test above), connecting it to another cluster or starting a new local
    one failed (TrainController "cancelled before it started"; GCS InvalidAuthToken),
    although each test passed alone. A fresh driver process is what a user runs anyway."""
    code = ("import json, sys; from tests.train import test_jobs as t; "
            f"print('RESULT ' + json.dumps(t.{function}(**json.loads(sys.argv[1]))))")
    run = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)],
                         cwd=Path(__file__).resolve().parents[2], capture_output=True,
                         text=True, timeout=800, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    results = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and results, (run.stdout + run.stderr)[-4000:]
    return json.loads(results[-1][len("RESULT "):])


def _two_worker_run_killed_once(overrides: list[str], ray_address: str,
                                storage_path: str) -> dict:
    from train.jobs import run_training

    config = load_config(None, overrides)
    resumed = run_training(config, workers=2, cpus_per_worker=0.5, ray_address=ray_address,
                           fail_once_at_step=3, fail_rank=1, storage_path=Path(storage_path))
    return {"name": resumed.name, "manifest": resumed.manifest.to_json()}


def test_two_worker_run_with_one_worker_killed_resumes_from_its_checkpoint(tiny_overrides,
                                                                           tmp_path):
    """Data-parallel on 2 workers; only rank 1 dies at step 3. Ray Train restarts the
    worker group from the step-2 checkpoint and the run finishes all 4 steps on 2 workers."""
    overrides = tiny_overrides + ["max_examples=16", "max_steps=4", "save_steps=2"]
    # A `ray start` head, not ray.init()'s local one: that gives its raylet a fixed 30 s
    # to register, which a busy 2-core machine missed.
    with ray_head() as (_, gcs_address):
        resumed = in_fresh_process("_two_worker_run_killed_once", overrides=overrides,
                                   ray_address=gcs_address,
                                   storage_path=str(tmp_path / "ray_results"))
    scratch = tmp_path / "ray_results" / resumed["name"] / "scratch"
    assert (scratch / "failed-rank1").read_text() == "3"
    assert not (scratch / "failed-rank0").exists()  # only one of the two was killed
    assert resumed["manifest"]["resumed_from_step"] == 2
    assert resumed["manifest"]["metrics"]["steps"] == 4
    assert resumed["manifest"]["metrics"]["world_size"] == 2


@contextmanager
def ray_head(num_cpus: int = 2) -> Iterator[tuple[str, str]]:
    """A real local Ray head (``ray start --head``) on free ports; yields its dashboard
    address (for jobs) and its GCS address (for ``ray.init``) once the job API answers,
    and ends it (by its process) afterwards."""
    from ray.job_submission import JobSubmissionClient

    dashboard, gcs_port = free_port(), free_port()
    # Ray's unix socket paths must stay under 107 bytes: pytest's tmp_path is too deep.
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    # Jobs inherit the head's environment; `signals` must be on its PATH as it is in the
    # images (CI runs .venv/bin/python without activating the venv).
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1", "PATH": path}
    head = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head", "--block",
         f"--port={gcs_port}", f"--dashboard-port={dashboard}", "--include-dashboard=true",
         # Fixed defaults (e.g. the job agent's 52365) would collide with any other Ray on
         # this machine, such as the local one an earlier test started in this process.
         f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
         f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
         f"--ray-client-server-port={free_port()}",
         "--dashboard-host=127.0.0.1", f"--num-cpus={num_cpus}", f"--temp-dir={ray_tmp}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        address = f"http://127.0.0.1:{dashboard}"
        deadline = time.monotonic() + 120
        while True:
            try:
                JobSubmissionClient(address)
                break
            except Exception:
                if time.monotonic() > deadline or head.poll() is not None:
                    raise
                time.sleep(2)
        yield address, f"127.0.0.1:{gcs_port}"
    finally:
        head.terminate()  # `ray start --block` takes its own processes down with it
        head.wait(90)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def submit_when_agent_is_up(submit):
    """Call ``submit``; the dashboard answers before its job agent is up ("No available
    agent"), so retry that for up to 2 minutes."""
    deadline = time.monotonic() + 120
    while True:
        try:
            return submit()
        except RuntimeError as error:
            if "No available agent" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(2)


def wait_for_job(client, job: str, timeout_s: float = 600) -> tuple[object, str]:
    """The job's final status and its logs."""
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + timeout_s
    while (status := client.get_job_status(job)) not in {
            JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, client.get_job_logs(job)[-3000:]
        time.sleep(3)
    return status, client.get_job_logs(job)


def test_drift_alert_submits_retraining_that_a_real_ray_head_runs(tiny_model_dir, tmp_path,
                                                                 reuters_dataset, monkeypatch):
    """Labels show the production adapter's precision fell below the floor: the drift
    monitor exports the labelled window after a replay sample of the training split and
    submits `signals train --workers 2` on it to a real Ray head (``ray job submit``'s
    API), which runs it data-parallel on two workers. The job continues the version the
    production alias names (an update) and points the candidate alias at what it
    published, for the promotion gate."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    from ingestion.config import DriftConfig, IngestConfig
    from ingestion.service import IngestionService
    from ingestion.store import NewPrediction, Store
    from pipeline.article import Article
    from pipeline.dataset import load_split
    from pipeline.dedupe import content_hash
    from train.jobs import run_training
    from classify.registry import AdapterRegistry

    registry_dir = tmp_path / "registry"
    train_config = tmp_path / "retrain.yaml"
    train_config.write_text(yaml.safe_dump({
        "method": "lora", "base_model": str(tiny_model_dir), "registry": str(registry_dir),
        "max_examples": 8, "sampling": "balanced", "max_steps": 2, "batch_size": 4,
        "max_prompt_tokens": 160, "bf16": False, "validation_days": 5,
        "validation_max_examples": 8}))
    registry = AdapterRegistry(registry_dir)
    production = run_training(load_config(train_config, [f"dataset={reuters_dataset}",
                                                         "max_steps=1"]), local=True)
    registry.set_alias("production", production.name)
    store = Store(f"sqlite:///{tmp_path / 'ingest.db'}")
    now = datetime.now(timezone.utc)
    ids = []
    for i in range(40):  # spread over 20 days: a training part and a validation window
        article = Article(id=f"d{i}", title=f"Company {i} {'buys' if i % 2 else 'earns'}",
                          text=f"Company {i} said it {'agreed to acquire a rival' if i % 2 else 'earned 3 mln dlrs'} (item {i}).",
                          date_published=now - timedelta(days=20 - i / 2, hours=1))
        ids.append(store.insert_item(article, "wire", content_hash(article), None,
                                     shadow=False)[0])
    # production said "signal" for every item; the analysts say half are not
    store.record_predictions("primary", [
        NewPrediction(i, "production", "v1", 0.9, 0.5, 1, False) for i in ids])
    for position, item_id in enumerate(ids):
        store.add_feedback(item_id, position % 2, "analyst")

    with ray_head() as (address, _):
        client = JobSubmissionClient(address)
        # The monitor counts a failed submission and goes on (tested elsewhere); here the
        # job agent must be up first, so a trivial job goes through before the check.
        warmup = submit_when_agent_is_up(lambda: client.submit_job(entrypoint="true"))
        assert wait_for_job(client, warmup, 120)[0] == JobStatus.SUCCEEDED
        # The job inherits the head's environment: this tree's code and `signals` script.
        config = IngestConfig(database_url=str(store.url), drift=DriftConfig(
            window_days=30, min_labels=20, precision_floor=0.8, recall_floor=None,
            max_positive_rate_shift=None, ray_address=address, train_config=train_config,
            retrain_workers=2, export_dir=tmp_path / "exports", continue_alias="production",
            publish_alias="candidate", replay_dataset=reuters_dataset, replay_examples=8,
            calibration_days=5))
        service = IngestionService(config, store)
        results = service.drift.check()
        assert any(r.firing and r.rule == "precision_floor" for r in results)
        (retrain,) = service.drift.retrains
        assert retrain.job_id is not None, "the submission failed (see the log)"
        assert (retrain.trigger, retrain.items, retrain.replayed) == ("drift", 40, 8)
        assert len(load_split(retrain.dataset_dir, retrain.split)) == 48
        status, logs = wait_for_job(client, retrain.job_id)
        assert status == JobStatus.SUCCEEDED, logs[-3000:]
    [version] = [v for v in registry.list() if v.name != production.name]
    assert f"adapter {version.name} written" in logs
    assert version.manifest.metrics.world_size == 2
    assert version.manifest.dataset.split == retrain.split
    assert version.manifest.dataset.path == Path(retrain.dataset_dir).resolve()
    # an update of the version production named when the job started, now the candidate
    assert version.manifest.init_adapter == production.name
    assert registry.aliases() == {"production": production.name, "candidate": version.name}


# --- what Ray Train workers ask for: configuration, not the cluster's current state ------

def _head_env(cluster_spec: dict) -> dict[str, str]:
    container = cluster_spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def _ray_clusters(kustomization: str):
    from tests.k8s.manifests import render

    for obj in render(kustomization):
        if obj["kind"] == "RayCluster":
            yield f"RayCluster/{obj['metadata']['name']}", obj["spec"]
        elif obj["kind"] == "RayJob":
            yield f"RayJob/{obj['metadata']['name']}", obj["spec"]["rayClusterSpec"]


def _groups_that_fit(cluster_spec: dict, per_worker: dict) -> list[str]:
    """Worker groups whose pods offer at least ``per_worker`` (KubeRay advertises a
    pod's CPU and nvidia.com/gpu limits to Ray as CPU and GPU)."""
    def cpus(quantity) -> float:  # "4", 4, "500m"
        text = str(quantity)
        return float(text[:-1]) / 1000 if text.endswith("m") else float(text)

    fits = []
    for group in cluster_spec.get("workerGroupSpecs", []):
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        offered = {"CPU": cpus(limits.get("cpu", 0)),
                   "GPU": float(limits.get("nvidia.com/gpu", 0))}
        if all(offered.get(k, 0) >= v for k, v in per_worker.items()):
            fits.append(group["groupName"])
    return fits


@pytest.mark.parametrize("kustomization", ["overlays/gpu", "overlays/gpu/jobs"])
def test_gpu_training_asks_for_a_gpu_that_an_autoscaled_group_supplies(kustomization,
                                                                       monkeypatch):
    """On the gpu overlay the driver (on the head) is configured to ask for one GPU per
    worker even when no GPU node exists yet (cluster CPUs 0, GPUs 0: the head has
    num-cpus 0 and the gpu group may be at zero); some worker group offers it."""
    from train.jobs import WorkerResources, scaling_config

    for owner, spec in _ray_clusters(kustomization):
        for name in [n for n in os.environ if n.startswith("SIGNALS_TRAIN_")]:
            monkeypatch.delenv(name)
        for name, value in _head_env(spec).items():
            monkeypatch.setenv(name, value)
        scaling = scaling_config(1, WorkerResources(), cluster_cpus=0)
        per_worker = scaling._resources_per_worker_not_none
        assert scaling.use_gpu and per_worker["GPU"] == 1, owner
        groups = _groups_that_fit(spec, per_worker)
        assert groups, f"{owner}: no worker group offers {per_worker}"
        if owner.startswith("RayCluster/"):
            group = next(g for g in spec["workerGroupSpecs"] if g["groupName"] == groups[0])
            assert group["minReplicas"] == 0 and spec["enableInTreeAutoscaling"], \
                "the GPU group starts at zero and the autoscaler adds it on demand"


def test_cpu_clusters_ask_for_no_gpu(monkeypatch):
    from train.jobs import WorkerResources, scaling_config

    for kustomization in ("overlays/cpu-dev", "overlays/cpu-dev/jobs", "base"):
        for owner, spec in _ray_clusters(kustomization):
            assert not [n for n in _head_env(spec) if n.startswith("SIGNALS_TRAIN_")], owner
    for name in [n for n in os.environ if n.startswith("SIGNALS_TRAIN_")]:
        monkeypatch.delenv(name)
    scaling = scaling_config(2, WorkerResources(), cluster_cpus=4)
    assert not scaling.use_gpu
    assert scaling._resources_per_worker_not_none == {"CPU": 2}


def test_worker_resources_come_from_the_environment_and_refuse_nonsense(monkeypatch):
    from pydantic import ValidationError

    from train.jobs import WorkerResources, scaling_config

    monkeypatch.setenv("SIGNALS_TRAIN_GPUS_PER_WORKER", "1")
    monkeypatch.setenv("SIGNALS_TRAIN_CPUS_PER_WORKER", "4")
    # The request does not depend on what the cluster has right now.
    for cluster_cpus in (0, 2, 64):
        scaling = scaling_config(2, WorkerResources(), cluster_cpus=cluster_cpus)
        assert scaling.total_resources == {"CPU": 8, "GPU": 2}
    monkeypatch.setenv("SIGNALS_TRAIN_GPUS_PER_WORKER", "-1")
    with pytest.raises(ValidationError, match="gpus_per_worker"):
        WorkerResources()


def _gpu_demand_on_a_cpu_only_ray() -> dict:
    import ray
    from ray.autoscaler.v2.sdk import get_cluster_status

    from train.jobs import WorkerResources, scaling_config

    os.environ["SIGNALS_TRAIN_GPUS_PER_WORKER"] = "1"
    os.environ["SIGNALS_TRAIN_CPUS_PER_WORKER"] = "1"
    ray.init(num_cpus=1, num_gpus=0, include_dashboard=False)
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        scaling = scaling_config(1, WorkerResources(), ray.cluster_resources()["CPU"])
        group = scaling.as_placement_group_factory()()
        ready, _ = ray.wait([group.ready()], timeout=3)
        deadline, demands = time.monotonic() + 60, []
        while not demands and time.monotonic() < deadline:
            status = get_cluster_status(ray.get_runtime_context().gcs_address)
            demands = [request.bundle for demand in status.resource_demands.placement_group_demand
                       for request in demand.bundles_by_count]
            time.sleep(1)
        return {"cluster_gpus": gpus, "placed": bool(ready), "demands": demands}
    finally:
        ray.shutdown()


def test_on_a_real_ray_without_gpus_the_request_is_a_pending_gpu_demand():
    """A local Ray with no GPU stands for a cluster whose gpu group is at zero: the
    workers' placement group is not refused, it waits, and the autoscaler's view of the
    cluster lists the GPU bundle as unmet demand: what makes KubeRay's autoscaler add a
    GPU node. (Deciding from the cluster's resources, as before, asked for no GPU here.)"""
    seen = in_fresh_process("_gpu_demand_on_a_cpu_only_ray")
    assert seen["cluster_gpus"] == 0
    assert not seen["placed"], "placed without a GPU"
    assert {"CPU": 1.0, "GPU": 1.0} in seen["demands"], seen["demands"]
