"""Where the pods that read strangers' text may connect (issue 29): the rendered egress
NetworkPolicies evaluated as Kubernetes evaluates them (a pod selected by any egress
policy reaches only what one of them allows; peers by pod and namespace labels or by
ipBlock with its exceptions; numbered or named ports, with their protocol)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pytest

from tests.k8s.manifests import render
from tests.k8s.test_access import STACKS, Pod, _peer_admits, _pods, _selects


@dataclass
class Address:
    """A destination outside the namespace's pods: an IP (a node, a cloud service)."""

    ip: str


POD_IP = "10.244.1.7"  # what every pod's address looks like to an ipBlock


def _peer_reaches(peer: dict, target: Pod | Address) -> bool:
    if "ipBlock" in peer:
        ip = ipaddress.ip_address(target.ip if isinstance(target, Address) else POD_IP)
        block = peer["ipBlock"]
        network = ipaddress.ip_network(block["cidr"])
        if ip.version != network.version or ip not in network:
            return False
        return not any(ip in ipaddress.ip_network(e) for e in block.get("except", [])
                       if ipaddress.ip_network(e).version == ip.version)
    return isinstance(target, Pod) and _peer_admits(peer, target)


def egress_allowed(policies: list[dict], source: Pod, target: Pod | Address, port: int,
                   protocol: str = "TCP") -> bool:
    selecting = [p for p in policies if "Egress" in p["spec"].get("policyTypes", [])
                 and _selects(p["spec"]["podSelector"], source.labels)]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("egress", []):
            peers = rule.get("to")
            if peers and not any(_peer_reaches(peer, target) for peer in peers):
                continue
            entries = rule.get("ports")
            if not entries:
                return True
            for entry in entries:
                if entry.get("protocol", "TCP") != protocol:
                    continue
                wanted = entry.get("port")
                named = isinstance(wanted, str) and isinstance(target, Pod)
                number = target.ports.get(wanted) if named else wanted
                if wanted is None or number == port:
                    return True
    return False


DNS = Pod("coredns", {"k8s-app": "kube-dns"}, namespace="kube-system")
METADATA = Address("169.254.169.254")
PUBLIC = [Address("93.184.216.34"), Address("2606:4700:4700::1111")]
INTERNAL = [Address("10.0.0.5"), Address("172.16.4.4"), Address("192.168.1.1"),
            Address("100.64.0.9"), Address("127.0.0.1"), Address("fd00::5"),
            Address("::ffff:10.0.0.5")]


@pytest.fixture(params=STACKS)
def stack(request):
    policies = [o for o in render(request.param) if o["kind"] == "NetworkPolicy"]
    return policies, _pods(request.param)


def test_ingestion_reaches_dns_its_services_and_the_internet_only(stack):
    policies, pods = stack
    ingestion = pods["Deployment/ingestion"]
    assert egress_allowed(policies, ingestion, DNS, 53, "UDP")
    assert egress_allowed(policies, ingestion, pods["Deployment/classifier"], 8000)
    assert egress_allowed(policies, ingestion, pods["RayCluster/signals-ray:head"], 8265)
    for public in PUBLIC:
        for port in (80, 443, 993):  # pages, feeds, IMAP
            assert egress_allowed(policies, ingestion, public, port), (public, port)
    assert egress_allowed(policies, ingestion, Address("10.20.0.4"), 5432)  # PostgreSQL
    for port in (80, 443, 8000):
        assert not egress_allowed(policies, ingestion, METADATA, port), port
        for internal in INTERNAL:
            assert not egress_allowed(policies, ingestion, internal, port), (internal, port)
    # cluster pods it has no business with
    assert not egress_allowed(policies, ingestion, pods["Deployment/vllm"], 8000)
    head = pods["RayCluster/signals-ray:head"]
    assert not egress_allowed(policies, ingestion, head, head.ports["gcs-server"])


def test_training_pods_reach_ray_dns_the_api_server_and_the_internet_only(stack):
    policies, pods = stack
    head, worker = pods["RayJob/train-lora:head"], pods["RayCluster/signals-ray:cpu"]
    for source in (head, worker):
        assert egress_allowed(policies, source, DNS, 53, "UDP")
        assert egress_allowed(policies, source, pods["RayCluster/signals-ray:head"], 6379)
        assert egress_allowed(policies, source, Address("10.0.0.1"), 443)  # the API server
        assert egress_allowed(policies, source, PUBLIC[0], 80)
        assert not egress_allowed(policies, source, METADATA, 80)
        for other in ("Deployment/ingestion", "Deployment/classifier", "Deployment/vllm"):
            target = pods[other]
            assert not egress_allowed(policies, source, target, target.ports["http"]), other
        for internal in INTERNAL:
            assert not egress_allowed(policies, source, internal, 8080), internal


def test_a_job_submitter_reaches_the_job_api_and_dns_only(stack):
    policies, pods = stack
    submitter, head = pods["RayJob/train-dpo:submitter"], pods["RayJob/train-dpo:head"]
    assert egress_allowed(policies, submitter, head, 8265)
    assert egress_allowed(policies, submitter, DNS, 53, "UDP")
    assert not egress_allowed(policies, submitter, head, head.ports["gcs-server"])
    assert not egress_allowed(policies, submitter, METADATA, 80)
    assert not egress_allowed(policies, submitter, PUBLIC[0], 443)
