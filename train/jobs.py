"""Every training run is a Ray job: one entry point, locally or on a cluster.

``signals train --config X.yaml`` calls :func:`run_training`, which joins the Ray
cluster named by ``--ray-address`` / ``RAY_ADDRESS`` (set by ``ray job submit`` and by a
KubeRay ``RayJob``) or starts a local one, and runs the method under Ray Train's
``TorchTrainer`` with ``workers`` data-parallel workers (DDP: gloo on CPUs, NCCL on
GPUs). Each worker's Hugging Face trainer checkpoints every ``save_steps``; Ray's
``RayTrainReportCallback`` hands the checkpoints and the latest metrics to Ray (visible
in the Ray dashboard and the job logs while it runs), and after a worker failure Ray
Train restarts the group, which resumes from the last checkpoint. Rank 0 publishes the
adapter to the registry under a name chosen here, before the run starts.

``local=True`` skips Ray and runs the method in this process (quick experiments, tests).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.settings import Paths
from train.model import pin_init_adapter
from train.trainer import RunContext
from train.config import CONFIGS, AnyTrainConfig, TrainConfig
from classify.registry import AdapterRegistry, AdapterVersion

log = logging.getLogger(__name__)


class WorkerResources(BaseSettings):
    """What each Ray Train worker asks the cluster for; every field reads
    ``SIGNALS_TRAIN_<FIELD>`` (set on the Ray head, where ``signals train`` runs as the
    driver: k8s/overlays/gpu).

    A request, not an observation of the cluster: a GPU group at zero replicas has no GPU
    to observe, and only a pending request for one makes Ray's autoscaler add a node.
    """

    model_config = SettingsConfigDict(env_prefix="SIGNALS_TRAIN_")

    gpus_per_worker: float = Field(
        default=0, ge=0,
        description="GPUs each worker reserves (0: train on CPUs). 1 on GPU clusters: the "
        "autoscaler then scales a worker group whose pods offer nvidia.com/gpu up from zero.")
    cpus_per_worker: float | None = Field(
        default=None, gt=0,
        description="CPUs each worker reserves. Unset: the CPUs the cluster has now, split "
        "among the workers (at least 1); with GPUs, set it to what one GPU node offers or "
        "less, so the request fits a node the autoscaler can add.")


def scaling_config(workers: int, resources: WorkerResources, cluster_cpus: float):
    """Ray Train's ScalingConfig for ``workers`` workers that each ask for ``resources``."""
    from ray.train import ScalingConfig

    cpus = resources.cpus_per_worker or max(1.0, cluster_cpus // workers)
    per_worker = {"CPU": cpus}
    if resources.gpus_per_worker:
        per_worker["GPU"] = resources.gpus_per_worker
    return ScalingConfig(num_workers=workers, use_gpu=bool(resources.gpus_per_worker),
                         resources_per_worker=per_worker)


def method_function(method: str):
    """The training function of a method, from :data:`train.config.CONFIGS` (imported
    lazily: they pull in torch/TRL)."""
    if method not in CONFIGS:
        raise ValueError(f"method: unknown training method {method!r}; "
                         f"known: {', '.join(CONFIGS)}")
    module, function = CONFIGS[method].trainer.split(":")
    return getattr(importlib.import_module(module), function)


def _config_from_dict(data: dict[str, Any]) -> TrainConfig:
    from pydantic import TypeAdapter

    return TypeAdapter(AnyTrainConfig).validate_python(data)


def fail_once_at_step(step: int, marker: Path):
    """Resilience drill: a callback that kills its worker process once, at ``step``.

    A marker file makes it fire only on the first attempt, so the restarted worker
    must get past ``step`` from the last checkpoint. Never on by default.
    """
    from transformers import TrainerCallback

    class FailOnceAtStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step and not marker.exists():
                marker.write_text(str(step))
                # Ray's controller collects reports at its health-check poll (2 s); a crash
                # inside that window would also lose the last checkpoint, which is not
                # what this drill is about.
                time.sleep(5)
                log.warning("resilience drill: killing worker %d at step %d", os.getpid(), step)
                os._exit(17)

    return FailOnceAtStep()


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: resume from Ray's checkpoint if any, train, report."""
    import ray.train
    from ray.train.huggingface.transformers import RayTrainReportCallback

    config = _config_from_dict(loop_config["config"])
    context = ray.train.get_context()
    rank = context.get_world_rank()
    callbacks: list[Any] = [RayTrainReportCallback()]
    # The drill kills every worker, or only the one of rank ``fail_rank`` when set (a
    # multi-worker run must recover from losing one worker, not only all of them).
    if loop_config.get("fail_once_at_step") and loop_config.get("fail_rank") in (None, rank):
        callbacks.append(fail_once_at_step(loop_config["fail_once_at_step"],
                                           Path(loop_config["scratch"]) / f"failed-rank{rank}"))
    run = RunContext(callbacks=callbacks, save_steps=config.save_steps,
                     output_dir=Path(loop_config["scratch"]) / f"rank{rank}",
                     adapter_name=loop_config["adapter_name"])
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        _run(config, run)
        return
    with checkpoint.as_directory() as directory:
        hf_checkpoint = Path(directory) / RayTrainReportCallback.CHECKPOINT_NAME
        state = json.loads((hf_checkpoint / "trainer_state.json").read_text())
        run.resume_from_checkpoint = str(hf_checkpoint)
        run.resumed_from_step = state["global_step"]
        log.info("rank %d resumes from the checkpoint at step %d", rank, state["global_step"])
        _run(config, run)


def _run(config: TrainConfig, run: RunContext) -> None:
    import ray.train

    method_function(config.method)(config, run)
    # Every rank reports once more so the run ends in step on all of them.
    ray.train.report({"finished": 1})


def run_training(config: TrainConfig, workers: int = 1, ray_address: str | None = None,
                 local: bool = False, cpus_per_worker: float | None = None,
                 fail_once_at_step: int | None = None, fail_rank: int | None = None,
                 storage_path: Path | None = None) -> AdapterVersion:
    """Train ``config`` as a Ray Train job (or in this process with ``local``).

    ``fail_once_at_step`` (a resilience drill, never on by default) kills the workers
    once at that step, or only the worker of rank ``fail_rank`` when given."""
    registry = AdapterRegistry(config.registry)
    adapter_name = registry.new_name(config.method, f"{config.dataset.name}-{config.split}")
    config = pin_init_adapter(config)
    if local:
        return method_function(config.method)(config, RunContext(adapter_name=adapter_name))

    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    address = ray_address or os.environ.get("RAY_ADDRESS")
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=True,
             include_dashboard=False if address is None else None)
    resources = WorkerResources()
    if cpus_per_worker:
        resources = resources.model_copy(update={"cpus_per_worker": cpus_per_worker})
    scaling = scaling_config(workers, resources, ray.cluster_resources().get("CPU", 1))
    storage = Path(storage_path or Paths().data_dir / "ray_results").resolve()
    scratch = storage / adapter_name / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config.model_dump(mode="json"), "adapter_name": adapter_name,
                           "scratch": str(scratch), "fail_once_at_step": fail_once_at_step,
                           "fail_rank": fail_rank},
        scaling_config=scaling,
        run_config=RunConfig(name=adapter_name, storage_path=str(storage),
                             failure_config=FailureConfig(max_failures=2),
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    log.info("Ray Train: %s with %d worker(s) x %s on %s", config.method, workers,
             scaling.resources_per_worker, address or "a local Ray")
    result = trainer.fit()
    if result.error:
        raise RuntimeError(f"training run {adapter_name} failed: {result.error}")
    return registry.get(adapter_name)
