"""Every kustomization renders with the real kustomize (kubectl kustomize), and every
object it renders validates against the Kubernetes schemas (kubernetes-validate, strict)
or, for KubeRay and Prometheus Operator objects, against their CRD schemas."""

from __future__ import annotations

import copy

import pytest

from tests.k8s.manifests import (KUBERNETES_VERSIONS, kustomizations, pod_templates, render,
                                 schema_errors)
from train.config import METHODS

EXPECTED = {"base", "jobs", "overlays/cpu-dev", "overlays/cpu-dev/jobs", "overlays/gpu",
            "overlays/gpu/jobs"}
ALL = [str(k) for k in kustomizations()]
STACKS = [k for k in ALL if not k.endswith("jobs")]
JOBS = [k for k in ALL if k.endswith("jobs")]


def test_the_expected_kustomizations_exist():
    assert EXPECTED <= set(ALL), f"missing: {EXPECTED - set(ALL)}"


@pytest.mark.parametrize("kustomization", ALL)
def test_every_object_validates_against_its_schema(kustomization):
    objects = render(kustomization)
    assert objects, f"k8s/{kustomization} rendered nothing"
    problems = []
    for obj in objects:
        for version in KUBERNETES_VERSIONS:
            for error in schema_errors(obj, version):
                problems.append(f"{obj['kind']}/{obj['metadata']['name']} "
                                f"(Kubernetes {version}): {error}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("kustomization", ALL)
def test_namespaced_objects_land_in_the_signals_namespace(kustomization):
    for obj in render(kustomization):
        if obj["kind"] == "Namespace":
            continue
        assert obj["metadata"].get("namespace") == "signals", \
            f"{obj['kind']}/{obj['metadata']['name']} has no namespace signals"


@pytest.mark.parametrize("kustomization", STACKS)
def test_each_stack_has_the_whole_online_side(kustomization):
    kinds = {(o["kind"], o["metadata"]["name"]) for o in render(kustomization)}
    for wanted in [("Deployment", "vllm"), ("Service", "vllm"),
                   ("Deployment", "classifier"), ("Service", "classifier"),
                   ("Deployment", "ingestion"), ("Service", "ingestion"),
                   ("PersistentVolumeClaim", "signals-data"), ("RayCluster", "signals-ray"),
                   ("ServiceMonitor", "signals"), ("PrometheusRule", "signals")]:
        assert wanted in kinds, f"k8s/{kustomization} lacks {wanted}"


@pytest.mark.parametrize("kustomization", JOBS)
def test_one_rayjob_per_method_with_its_lifecycle_limits(kustomization):
    jobs = {o["metadata"]["labels"]["signals.io/method"]: o
            for o in render(kustomization) if o["kind"] == "RayJob"}
    assert set(jobs) == set(METHODS), f"RayJobs for {sorted(jobs)}, methods {METHODS}"
    for method, job in jobs.items():
        spec = job["spec"]
        # KubeRay 1.7 deletion rules: the workers (GPUs) go the moment the job ends,
        # whatever the outcome; the head later; never the RayJob (its status is the record).
        # Rules mode excludes shutdownAfterJobFinishes and the global TTL.
        assert "shutdownAfterJobFinishes" not in spec and "ttlSecondsAfterFinished" not in spec
        rules = {(r["policy"], r["condition"].get("jobStatus")
                  or f"deployment {r['condition']['jobDeploymentStatus']}"):
                 r["condition"].get("ttlSeconds", 0)
                 for r in spec["deletionStrategy"]["deletionRules"]}
        for outcome in ("SUCCEEDED", "FAILED", "deployment Failed"):
            assert rules[("DeleteWorkers", outcome)] == 0, (method, outcome)
            assert 0 < rules[("DeleteCluster", outcome)] <= 3600, (method, outcome)
        assert not [r for r in rules if r[0] == "DeleteSelf"], method
        # Ray token auth: KubeRay generates the token and gives it to the submitter.
        assert spec["rayClusterSpec"]["authOptions"] == {"mode": "token"}, method
        # `ray job submit` runs in a light CPU image, not the (CUDA) training image.
        [submitter] = spec["submitterPodTemplate"]["spec"]["containers"]
        assert "cu" not in submitter["image"].rsplit(":", 1)[1].replace("cpu", ""), submitter
        assert "command" not in submitter, "KubeRay fills in `ray job submit ...`"
        assert spec["activeDeadlineSeconds"] > 0, method
        assert spec["backoffLimit"] >= 0, method
        assert spec["submitterConfig"]["backoffLimit"] >= 0, method
        assert spec["rayClusterSpec"]["rayVersion"] == "2.60.0"
        assert f"train/configs/{method}.yaml" in spec["entrypoint"], spec["entrypoint"]


def test_gpu_overlay_puts_vllm_and_training_on_gpus():
    vllm = next(o for o in render("overlays/gpu") if o["kind"] == "Deployment"
                and o["metadata"]["name"] == "vllm")
    limits = vllm["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits.get("nvidia.com/gpu") == 1
    for job in (o for o in render("overlays/gpu/jobs") if o["kind"] == "RayJob"):
        # The entry point is the Ray Train driver: if it reserved the worker's GPU, the
        # TorchTrainer worker could never be scheduled.
        assert not job["spec"].get("entrypointNumGpus"), job["metadata"]["name"]
        head = job["spec"]["rayClusterSpec"]["headGroupSpec"]
        assert head["rayStartParams"].get("num-cpus") == "0", "Train workers go to GPU nodes"
        workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
        gpus = [w["template"]["spec"]["containers"][0]["resources"]["limits"]
                .get("nvidia.com/gpu") for w in workers]
        assert gpus == [1], f"{job['metadata']['name']}: GPU workers {gpus}"
    for kustomization in ("overlays/cpu-dev", "overlays/cpu-dev/jobs"):
        for pod in pod_templates(render(kustomization)):
            for container in pod.spec["containers"]:
                assert "nvidia.com/gpu" not in str(container.get("resources")), pod.owner


# --- the validators reject what the API server would -------------------------------

def _find(kustomization, kind, name=None):
    return copy.deepcopy(next(o for o in render(kustomization) if o["kind"] == kind
                              and (name is None or o["metadata"]["name"] == name)))


def _mutations():
    deployment = _find("overlays/gpu", "Deployment", "classifier")
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPorts"] = 1
    yield "Deployment: unknown field in a container port", deployment

    deployment = _find("overlays/gpu", "Deployment", "classifier")
    deployment["spec"]["replicas"] = "two"
    yield "Deployment: replicas not an integer", deployment

    job = _find("overlays/gpu/jobs", "RayJob")
    job["spec"]["shutdownAfterJobFinish"] = True
    yield "RayJob: misspelt shutdownAfterJobFinishes", job

    job = _find("overlays/gpu/jobs", "RayJob")
    job["spec"]["deletionStrategy"]["deletionRules"][0]["policy"] = "DeleteGPUs"
    yield "RayJob: deletion policy outside its enum", job

    job = _find("overlays/gpu/jobs", "RayJob")
    job["spec"]["rayClusterSpec"]["authOptions"]["mode"] = "password"
    yield "RayJob: auth mode outside its enum (KubeRay 1.7: disabled, token)", job

    job = _find("overlays/gpu/jobs", "RayJob")
    job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    yield "RayJob: submitter pod template that is not a PodTemplateSpec", job

    cluster = _find("overlays/gpu", "RayCluster")
    cluster["spec"]["authOptions"]["token"] = "inline"
    yield "RayCluster: unknown field in authOptions", cluster

    policy = _find("overlays/gpu", "NetworkPolicy", "vllm")
    policy["spec"]["ingress"][0]["ports"][0]["port"] = {"name": "http"}
    yield "NetworkPolicy: port that is neither a number nor a name", policy

    ingress = _find("overlays/gpu", "Ingress")
    ingress["spec"]["tls"][0]["secret"] = ingress["spec"]["tls"][0].pop("secretName")
    yield "Ingress: misspelt secretName", ingress

    job = _find("overlays/gpu/jobs", "RayJob")
    del job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["groupName"]
    yield "RayJob: worker group without groupName", job

    job = _find("overlays/gpu/jobs", "RayJob")
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    head["containers"][0]["resources"]["limit"] = {"cpu": "1"}
    yield "RayJob: unknown field inside the embedded pod template", job

    cluster = _find("overlays/gpu", "RayCluster")
    cluster["spec"]["autoscalerOptions"]["upscalingMode"] = "Fast"
    yield "RayCluster: upscalingMode outside its enum", cluster

    monitor = _find("overlays/gpu", "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["interval"] = "30 seconds"
    yield "ServiceMonitor: interval that is not a Prometheus duration", monitor

    rule = _find("overlays/gpu", "PrometheusRule")
    del rule["spec"]["groups"][0]["rules"][0]["expr"]
    yield "PrometheusRule: rule without expr", rule


@pytest.mark.parametrize("what,obj", list(_mutations()), ids=lambda v: v if isinstance(v, str)
                         else "")
def test_validation_rejects_broken_objects(what, obj):
    assert schema_errors(obj, KUBERNETES_VERSIONS[-1]), f"accepted: {what}"
