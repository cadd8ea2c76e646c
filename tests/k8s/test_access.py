"""Who can reach what: the rendered NetworkPolicies evaluated as Kubernetes evaluates them
(a pod selected by any policy admits only what one of them allows; rules match on pod
labels, namespace labels and numbered or named ports), the API keys' Secret slots, and
the Ingress with TLS in front of the two public APIs only."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tests.k8s.manifests import env_value, kustomizations, pod_templates, render

STACKS = [str(k) for k in kustomizations() if not str(k).endswith("jobs")]
NAMESPACE = "signals"


@dataclass
class Pod:
    name: str
    labels: dict
    namespace: str = NAMESPACE
    ports: dict = field(default_factory=dict)  # name -> number


def _selects(selector: dict, labels: dict) -> bool:
    if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
    return True


def _peer_admits(peer: dict, source: Pod) -> bool:
    namespace_labels = {"kubernetes.io/metadata.name": source.namespace}
    if "namespaceSelector" in peer:
        if not _selects(peer["namespaceSelector"], namespace_labels):
            return False
        return "podSelector" not in peer or _selects(peer["podSelector"], source.labels)
    if "podSelector" in peer:  # without namespaceSelector: the policy's own namespace
        return source.namespace == NAMESPACE and _selects(peer["podSelector"], source.labels)
    return False  # ipBlock: not used here


def allowed(policies: list[dict], source: Pod, target: Pod, port: int) -> bool:
    selecting = [p for p in policies if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
                 and _selects(p["spec"]["podSelector"], target.labels)]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from")
            if peers and not any(_peer_admits(peer, source) for peer in peers):
                continue
            ports = rule.get("ports")
            if not ports:
                return True
            for entry in ports:
                wanted = entry.get("port")
                number = target.ports.get(wanted) if isinstance(wanted, str) else wanted
                if wanted is None or number == port:
                    return True
    return False


def _pods(kustomization: str) -> dict[str, Pod]:
    pods = {}
    jobs = "jobs" if kustomization == "base" else f"{kustomization}/jobs"
    objects = list(render(kustomization)) + list(render(jobs))
    for template in pod_templates(objects):
        labels = dict(template.labels)
        kind, _, rest = template.owner.partition("/")
        name, _, role = rest.partition(":")
        if kind in ("RayCluster", "RayJob") and role != "submitter":
            # KubeRay labels its pods; our templates do not carry these.
            labels["ray.io/node-type"] = "head" if role == "head" else "worker"
            labels["ray.io/cluster"] = name
        ports = {p["name"]: p["containerPort"] for c in template.spec["containers"]
                 for p in c.get("ports", []) if "name" in p}
        pods[template.owner] = Pod(template.owner, labels, ports=ports)
    return pods


@pytest.fixture(params=STACKS)
def stack(request):
    policies = [o for o in render(request.param) if o["kind"] == "NetworkPolicy"]
    return request.param, policies, _pods(request.param)


PROMETHEUS = Pod("prometheus", {"app.kubernetes.io/name": "prometheus"}, namespace="monitoring")
INGRESS_CONTROLLER = Pod("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"},
                         namespace="ingress-nginx")
KUBERAY = Pod("kuberay-operator", {"app.kubernetes.io/name": "kuberay-operator"},
              namespace="kuberay-system")
STRANGER = Pod("some-pod", {"app": "debug"})


def test_vllm_answers_the_classifier_and_prometheus_only(stack):
    _, policies, pods = stack
    vllm, classifier = pods["Deployment/vllm"], pods["Deployment/classifier"]
    port = vllm.ports["http"]
    assert allowed(policies, classifier, vllm, port)
    assert allowed(policies, PROMETHEUS, vllm, port)
    for other in ("Deployment/ingestion", "RayCluster/signals-ray:head",
                  "RayJob/train-lora:submitter", "Job/signals-model-prepare"):
        assert not allowed(policies, pods[other], vllm, port), other
    for outsider in (STRANGER, INGRESS_CONTROLLER, KUBERAY):
        assert not allowed(policies, outsider, vllm, port), outsider.name


def test_the_ray_job_api_answers_its_submitters_ingestion_and_kuberay_only(stack):
    _, policies, pods = stack
    heads = [p for name, p in pods.items() if name.endswith(":head")]
    assert {h.name for h in heads} >= {"RayCluster/signals-ray:head", "RayJob/train-lora:head"}
    for head in heads:
        dashboard = head.ports["dashboard"]
        for client in ("Deployment/ingestion", "RayJob/train-dpo:submitter"):
            assert allowed(policies, pods[client], head, dashboard), (client, head.name)
        assert allowed(policies, KUBERAY, head, dashboard)
        for other in ("Deployment/classifier", "Deployment/vllm", "Job/signals-model-prepare"):
            assert not allowed(policies, pods[other], head, dashboard), (other, head.name)
        assert not allowed(policies, STRANGER, head, dashboard)
        # Submitters reach the job API and nothing else of Ray (GCS, client port).
        submitter = pods["RayJob/train-lora:submitter"]
        for port in ("gcs-server", "client"):
            assert not allowed(policies, submitter, head, head.ports[port]), port
            assert not allowed(policies, pods["Deployment/ingestion"], head, head.ports[port])
        # Ray's own pods talk to each other on every port.
        worker = Pod("worker", {"ray.io/node-type": "worker", "ray.io/cluster": "c"})
        assert allowed(policies, worker, head, head.ports["gcs-server"])


def test_prometheus_may_scrape_every_metrics_port(stack):
    kustomization, policies, pods = stack
    monitors = [o for o in render(kustomization) if o["kind"] == "ServiceMonitor"]
    services = [o for o in render(kustomization) if o["kind"] == "Service"]
    scraped = 0
    for monitor in monitors:
        for service in services:
            if not _selects(monitor["spec"]["selector"],
                            service["metadata"].get("labels", {})):
                continue
            for pod in pods.values():
                if not _selects({"matchLabels": service["spec"]["selector"]}, pod.labels):
                    continue
                for endpoint in monitor["spec"]["endpoints"]:
                    assert allowed(policies, PROMETHEUS, pod, pod.ports[endpoint["port"]]), \
                        (pod.name, endpoint["port"])
                    scraped += 1
    assert scraped >= 3
    for name, pod in pods.items():  # Ray's metrics port on every Ray pod
        if "metrics" in pod.ports:
            assert allowed(policies, PROMETHEUS, pod, pod.ports["metrics"]), name


def test_the_public_apis_answer_the_ingress_controller(stack):
    _, policies, pods = stack
    for name in ("Deployment/classifier", "Deployment/ingestion"):
        assert allowed(policies, INGRESS_CONTROLLER, pods[name], pods[name].ports["http"])
    assert allowed(policies, pods["Deployment/ingestion"], pods["Deployment/classifier"],
                   pods["Deployment/classifier"].ports["http"])
    assert not allowed(policies, STRANGER, pods["Deployment/ingestion"],
                       pods["Deployment/ingestion"].ports["http"])


def test_every_pod_is_closed_by_default(stack):
    _, policies, pods = stack
    for name, pod in pods.items():
        for port in pod.ports.values() or [8000]:
            assert not allowed(policies, STRANGER, pod, port), (name, port)


def test_the_evaluator_opens_what_no_policy_selects():
    target = Pod("t", {"app": "x"}, ports={"http": 80})
    assert allowed([], STRANGER, target, 80)
    deny = {"spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}
    assert not allowed([deny], STRANGER, target, 80)


def test_vllm_and_the_classifier_get_the_same_optional_api_key_slot():
    for kustomization in STACKS:
        containers = {p.owner: p.spec["containers"][0]
                      for p in pod_templates(render(kustomization))}
        references = []
        # vLLM reads VLLM_API_KEY; the classifier sends the key from its own setting.
        for owner, variable in (("Deployment/vllm", "VLLM_API_KEY"),
                                ("Deployment/classifier", "SIGNALS_SERVE_VLLM_API_KEY")):
            entry = env_value(containers[owner], variable)
            assert entry, f"{kustomization} {owner}: no {variable}"
            references.append(entry["valueFrom"]["secretKeyRef"])
        assert references[0] == references[1]
        assert references[0]["optional"] is True  # the stack starts before a key is set


def test_the_gpu_overlay_serves_both_public_apis_over_tls_only():
    objects = render("overlays/gpu")
    [ingress] = [o for o in objects if o["kind"] == "Ingress"]
    services = {o["metadata"]["name"] for o in objects if o["kind"] == "Service"}
    backends = {path["backend"]["service"]["name"]
                for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]}
    assert backends == {"classifier", "ingestion"} and backends <= services
    hosts = {rule["host"] for rule in ingress["spec"]["rules"]}
    tls_hosts = {h for entry in ingress["spec"]["tls"] for h in entry["hosts"]}
    assert hosts == tls_hosts and all(e["secretName"] for e in ingress["spec"]["tls"])
    assert ingress["metadata"]["annotations"][
        "nginx.ingress.kubernetes.io/force-ssl-redirect"] == "true"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert not [o for o in render("overlays/cpu-dev") if o["kind"] == "Ingress"]


def test_the_ingress_routes_the_apis_v1_paths_only():
    """/metrics, /docs, /openapi.json and the probes stay inside the cluster."""
    [ingress] = [o for o in render("overlays/gpu") if o["kind"] == "Ingress"]
    paths = [(p["path"], p["pathType"]) for rule in ingress["spec"]["rules"]
             for p in rule["http"]["paths"]]
    assert paths == [("/v1", "Prefix"), ("/v1", "Prefix")]


@pytest.mark.parametrize("kustomization, required", [("overlays/gpu", True),
                                                     ("overlays/cpu-dev", False)])
def test_the_gpu_overlay_requires_the_read_and_classify_tokens(kustomization, required):
    containers = {p.owner: p.spec["containers"][0] for p in pod_templates(render(kustomization))}
    for owner, variable, key in (
            ("Deployment/classifier", "SIGNALS_SERVE_CLASSIFY_TOKEN", "classify-token"),
            ("Deployment/ingestion", "SIGNALS_INGEST_READ_TOKEN", "ingest-read-token"),
            ("Deployment/ingestion", "SIGNALS_INGEST_CLASSIFIER_TOKEN", "classify-token")):
        reference = env_value(containers[owner], variable)["valueFrom"]["secretKeyRef"]
        assert reference["key"] == key and reference["optional"] is (not required), (
            owner, variable)
