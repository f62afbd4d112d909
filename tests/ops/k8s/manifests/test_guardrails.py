"""The EKS guardrails: NetworkPolicies, PriorityClass, GPU ResourceQuota, node agents, metrics providers, platform."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from ops import core
from ops.infra import settings as infra_settings
from ops.k8s import objects as k8s_objects
from ops.k8s import platform, render, schema
from ops.k8s import policies as k8s_policies

Obj = dict[str, Any]
QUEUE_COMPONENT = "gpu-queue-autoscaling"
QUEUE = f"eks-prod+{QUEUE_COMPONENT}"


def _violations(policy: str, overlay: str, objects: list[Obj]) -> list[str]:
    found = k8s_policies.POLICIES[policy](overlay, objects)
    assert found, f"{policy} missed the planted mistake"
    return found


def _without(objects: list[Obj], kind: str, name: str) -> list[Obj]:
    return [o for o in objects if not (o["kind"] == kind and o["metadata"]["name"] == name)]


# --- NetworkPolicies -----------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", render.EKS_OVERLAYS)
def test_eks_overlays_render_the_network_policies(overlay: str, rendered: dict[str, list[Obj]]) -> None:
    policies = {o["metadata"]["name"]: o for o in k8s_objects.find(rendered[overlay], "NetworkPolicy")}
    assert set(policies) == {"default-deny", "allow-inference-http", "allow-dns-egress", "allow-image-fetch-egress"}
    assert {o["metadata"]["namespace"] for o in policies.values()} == {"inference"}
    assert policies["default-deny"]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


def test_local_has_no_network_policies(rendered: dict[str, list[Obj]]) -> None:
    assert k8s_objects.find(rendered["local"], "NetworkPolicy") == []


def test_without_default_deny(fresh: Callable[[str], list[Obj]]) -> None:
    objects = _without(fresh("eks-prod"), "NetworkPolicy", "default-deny")
    assert _violations("network-policy", "eks-prod", objects) == [
        "namespace inference: no default-deny NetworkPolicy (podSelector {}, Ingress+Egress)"
    ]


def test_without_the_service_port(fresh: Callable[[str], list[Obj]]) -> None:
    objects = _without(fresh("eks-prod"), "NetworkPolicy", "allow-inference-http")
    found = _violations("network-policy", "eks-prod", objects)
    for name in k8s_policies.SERVICES:
        assert f"Deployment/{name}: no NetworkPolicy admits Service/{name} port 80 (target http)" in found
        assert f"Deployment/{name}: no NetworkPolicy admits the metrics scrape on port 8080" in found


def test_a_service_port_open_only_to_some_peers_does_not_count(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-prod")
    (np_,) = k8s_objects.find(objects, "NetworkPolicy", "allow-inference-http")
    np_["spec"]["ingress"][0]["from"] = [{"podSelector": {"matchLabels": {"role": "frontend"}}}]
    assert len(_violations("network-policy", "eks-prod", objects)) == 4


def test_wrong_port_number(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-prod")
    (np_,) = k8s_objects.find(objects, "NetworkPolicy", "allow-inference-http")
    np_["spec"]["ingress"][0]["ports"] = [{"protocol": "TCP", "port": 9090}]
    _violations("network-policy", "eks-prod", objects)
    np_["spec"]["ingress"][0]["ports"] = [{"protocol": "TCP", "port": 8080}]  # by number works as well as by name
    assert k8s_policies.check_network_policy("eks-prod", objects) == []


@pytest.mark.parametrize("protocol", ["UDP", "TCP"])
def test_dns_egress_needs_both_protocols(fresh: Callable[[str], list[Obj]], protocol: str) -> None:
    objects = fresh("eks-prod")
    (np_,) = k8s_objects.find(objects, "NetworkPolicy", "allow-dns-egress")
    rule = np_["spec"]["egress"][0]
    rule["ports"] = [p for p in rule["ports"] if p["protocol"] != protocol]
    found = _violations("network-policy", "eks-prod", objects)
    assert "Deployment/image-classifier: no NetworkPolicy allows DNS egress (port 53, UDP and TCP)" in found


def _fetch_rule(objects: list[Obj]) -> Obj:
    (np_,) = k8s_objects.find(objects, "NetworkPolicy", "allow-image-fetch-egress")
    rule: Obj = np_["spec"]["egress"][0]
    return rule


def test_only_the_fetching_service_may_reach_the_internet(rendered: dict[str, list[Obj]]) -> None:
    """The egress follows each service's contract: image_url fetching for one, DNS only for the other."""
    assert k8s_policies.FETCHING_SERVICES == ("image-classifier",)
    objects = rendered["eks-prod"]
    for name in k8s_policies.SERVICES:
        (dep,) = k8s_objects.find(objects, "Deployment", name)
        labels = dep["spec"]["template"]["metadata"]["labels"]
        on_443 = k8s_policies.egress_v4_networks(objects, "inference", labels, 443)
        reachable = {str(a) for a in ("93.184.215.14", "1.1.1.1") if any(ipaddress.ip_address(a) in n for n in on_443)}
        assert reachable == ({"93.184.215.14", "1.1.1.1"} if name == "image-classifier" else set())
        everywhere = k8s_policies.egress_v4_networks(objects, "inference", labels)
        for address in ("169.254.169.254", "169.254.170.23", "10.40.0.10", "172.20.0.1", "100.64.0.1", "127.0.0.1"):
            assert not any(ipaddress.ip_address(address) in n for n in everywhere), (name, address)


def test_deny_all_egress_for_the_fetching_service_fails(fresh: Callable[[str], list[Obj]]) -> None:
    """The day-one outage of issue 19: default deny plus DNS only, and every image_url request fails."""
    objects = _without(fresh("eks-prod"), "NetworkPolicy", "allow-image-fetch-egress")
    assert _violations("network-policy", "eks-prod", objects) == [
        "Deployment/image-classifier: fetches caller-given URLs (image_url; fetches_urls in ops/core.py) but no "
        f"NetworkPolicy lets it reach all public IPv4 addresses on TCP {port}; image_url requests would fail "
        "(403 url_forbidden after the connect timeout)"
        for port in (80, 443)
    ]


def test_fetch_egress_on_one_port_only_fails(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-prod")
    rule = _fetch_rule(objects)
    rule["ports"] = [p for p in rule["ports"] if p["port"] != 80]
    (found,) = _violations("network-policy", "eks-prod", objects)
    assert "reach all public IPv4 addresses on TCP 80" in found


@pytest.mark.parametrize("hole", ["169.254.0.0/16", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8"])
def test_fetch_egress_without_a_non_public_except_fails(fresh: Callable[[str], list[Obj]], hole: str) -> None:
    """Metadata, the VPC, CGNAT and loopback stay unreachable even if the SSRF guard were bypassed."""
    objects = fresh("eks-prod")
    block = _fetch_rule(objects)["to"][0]["ipBlock"]
    block["except"].remove(hole)
    assert _violations("network-policy", "eks-prod", objects) == [
        f"Deployment/image-classifier: its egress reaches non-public ranges ['{hole}'] (VPC, metadata, loopback)"
    ]


def test_internet_egress_for_a_service_that_fetches_nothing_fails(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-prod")
    (np_,) = k8s_objects.find(objects, "NetworkPolicy", "allow-image-fetch-egress")
    np_["spec"]["podSelector"] = {}
    found = _violations("network-policy", "eks-prod", objects)
    assert found == [
        "Deployment/text-classifier: fetches no URLs (ops/core.py) but a NetworkPolicy lets it reach addresses "
        f"outside the cluster on TCP {port}; it needs DNS egress only"
        for port in (80, 443)
    ]


def test_a_ports_only_dns_rule_next_to_the_except_fails(fresh: Callable[[str], list[Obj]]) -> None:
    """aws/aws-network-policy-agent#326: the VPC CNI applies the `except` to a ports-only rule, so DNS to the
    CoreDNS ClusterIP (private) drops. Open DNS by its peers instead."""
    objects = fresh("eks-prod")
    (dns,) = k8s_objects.find(objects, "NetworkPolicy", "allow-dns-egress")
    del dns["spec"]["egress"][0]["to"]
    found = _violations("network-policy", "eks-prod", objects)
    assert any("next to a ports-only egress rule" in v and "#326" in v for v in found), found
    assert all(v.startswith("Deployment/image-classifier: ") for v in found if "#326" in v)


def test_a_second_rule_on_the_excepted_cidr_fails(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-prod")
    (np_,) = k8s_objects.find(objects, "NetworkPolicy", "allow-image-fetch-egress")
    np_["spec"]["egress"].append(
        {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"protocol": "UDP", "port": 53}]}
    )
    found = _violations("network-policy", "eks-prod", objects)
    assert any("ipBlock 0.0.0.0/0 with `except` appears in more than one egress rule" in v for v in found), found


def test_the_non_public_ranges_are_what_the_ssrf_guard_refuses() -> None:
    """The policy is the second control behind the fetcher's guard: every address it keeps closed, the guard
    refuses too (first and last address of each range, and the metadata addresses)."""
    from serving.fetch import METADATA_ADDRESSES, is_forbidden_address

    for net in k8s_policies.NON_PUBLIC_V4:
        assert is_forbidden_address(net.network_address), net
        assert is_forbidden_address(net.broadcast_address), net
    for address in METADATA_ADDRESSES:
        if address.version == 4:
            assert any(address in net for net in k8s_policies.NON_PUBLIC_V4), address


def test_the_fetching_fact_matches_the_services_settings() -> None:
    """`fetches_urls` in the registry is true exactly for the services whose settings configure a URL fetcher."""
    import importlib

    for service in core.SERVICES.values():
        settings = importlib.import_module(f"{service.package}.settings").Settings
        assert ("fetch_allowed_hosts" in settings.model_fields) == service.fetches_urls, service.name


# --- PriorityClass and the GPU quota -------------------------------------------------------------


@pytest.mark.parametrize("overlay", render.EKS_OVERLAYS)
def test_services_run_at_the_serving_priority(overlay: str, rendered: dict[str, list[Obj]]) -> None:
    (pc,) = k8s_objects.find(rendered[overlay], "PriorityClass")
    assert pc["metadata"]["name"] == k8s_policies.SERVING_PRIORITY_CLASS
    assert "namespace" not in pc["metadata"]
    for name in k8s_policies.SERVICES:
        (dep,) = k8s_objects.find(rendered[overlay], "Deployment", name)
        assert dep["spec"]["template"]["spec"]["priorityClassName"] == k8s_policies.SERVING_PRIORITY_CLASS
    # The overlay's node autoscaler (the Cluster Autoscaler or Karpenter) and the node agents keep system classes.
    (chosen,) = k8s_policies.node_autoscalers(rendered[overlay])
    _, name = k8s_policies.NODE_AUTOSCALERS[chosen].split("/")
    (autoscaler,) = k8s_objects.find(rendered[overlay], "Deployment", name)
    assert autoscaler["spec"]["template"]["spec"]["priorityClassName"] == "system-cluster-critical"


def test_gpu_quota_is_the_gpu_capacity(rendered: dict[str, list[Obj]]) -> None:
    (quota,) = k8s_objects.find(rendered["eks-prod"], "ResourceQuota", "gpu")
    assert quota["metadata"]["namespace"] == "inference"
    assert quota["spec"]["hard"] == {"requests.nvidia.com/gpu": str(k8s_policies.gpu_capacity())}
    assert k8s_policies.gpu_peak(rendered["eks-prod"]) == 5  # HPA maximum 4 + 1 surge pod


def test_quota_below_the_rollout_peak(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-prod")
    (quota,) = k8s_objects.find(objects, "ResourceQuota", "gpu")
    quota["spec"]["hard"]["requests.nvidia.com/gpu"] = "4"
    assert _violations("priority-and-quota", "eks-prod", objects) == [
        "ResourceQuota/gpu: requests.nvidia.com/gpu 4 < 5 GPUs a rollout at the HPA maximum holds; it would stall"
    ]


def test_missing_quota_and_priority(fresh: Callable[[str], list[Obj]]) -> None:
    objects = _without(
        _without(fresh("eks-prod"), "ResourceQuota", "gpu"), "PriorityClass", k8s_policies.SERVING_PRIORITY_CLASS
    )
    assert _violations("priority-and-quota", "eks-prod", objects) == [
        "PriorityClass/eks-inference-serving is missing",
        "namespace inference: no ResourceQuota on requests.nvidia.com/gpu",
    ]


def test_a_priority_class_in_the_system_range(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-prod")
    (pc,) = k8s_objects.find(objects, "PriorityClass")
    pc["value"] = 2_000_000_000
    _violations("priority-and-quota", "eks-prod", objects)


# --- node agents ---------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", render.EKS_OVERLAYS)
def test_dcgm_exporter_memory(overlay: str, rendered: dict[str, list[Obj]]) -> None:
    (ds,) = k8s_objects.find(rendered[overlay], "DaemonSet", "dcgm-exporter")
    spec = ds["spec"]["template"]["spec"]
    c = spec["containers"][0]
    assert spec["priorityClassName"] == "system-node-critical"
    assert c["resources"]["limits"]["memory"] == "1Gi"
    assert {"name": "GOMEMLIMIT", "value": "768MiB"} in c["env"]


def test_dcgm_without_gomemlimit(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-prod")
    (ds,) = k8s_objects.find(objects, "DaemonSet", "dcgm-exporter")
    c = ds["spec"]["template"]["spec"]["containers"][0]
    c["env"] = [e for e in c["env"] if e["name"] != "GOMEMLIMIT"]
    assert _violations("node-agents", "eks-prod", objects) == [
        "DaemonSet/dcgm-exporter container dcgm-exporter: no GOMEMLIMIT (the Go heap grows into the OOM killer)"
    ]


def test_gomemlimit_at_the_limit(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-prod")
    (ds,) = k8s_objects.find(objects, "DaemonSet", "dcgm-exporter")
    c = ds["spec"]["template"]["spec"]["containers"][0]
    for e in c["env"]:
        if e["name"] == "GOMEMLIMIT":
            e["value"] = "1GiB"
    _violations("node-agents", "eks-prod", objects)


def test_node_agent_without_priority(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-prod")
    (ds,) = k8s_objects.find(objects, "DaemonSet", "dcgm-exporter")
    del ds["spec"]["template"]["spec"]["priorityClassName"]
    assert _violations("node-agents", "eks-prod", objects) == [
        "DaemonSet/dcgm-exporter: priorityClassName should be system-node-critical"
    ]


# --- queue-depth autoscaling and its metrics provider ----------------------------------------------


def test_queue_component_reads_a_datadog_metric(rendered: dict[str, list[Obj]]) -> None:
    hpa = k8s_objects.hpa_for(rendered[QUEUE], "image-classifier")
    assert hpa is not None
    (external,) = [x["external"] for x in hpa["spec"]["metrics"] if x["type"] == "External"]
    assert external["metric"]["name"] == "datadogmetric@inference:image-classifier-queue-depth"
    assert external["target"] == {"type": "AverageValue", "averageValue": "8"}
    assert schema.schema_errors(k8s_objects.find(rendered[QUEUE], "DatadogMetric")) == []


def test_queue_component_without_its_provider_fails(fresh: Callable[[str], list[Obj]]) -> None:
    """The issue's rule: enabling the component on a platform with no external metrics provider is refused."""
    objects = fresh(QUEUE)
    (ns,) = k8s_objects.find(objects, "Namespace", "inference")
    del ns["metadata"]["annotations"][k8s_policies.EXTERNAL_METRICS_PROVIDER_ANNOTATION]
    assert _violations("metrics-providers", "eks-prod", objects) == [
        "HorizontalPodAutoscaler/image-classifier: reads External metric "
        "datadogmetric@inference:image-classifier-queue-depth but Namespace/inference declares no "
        "eks-inference.io/external-metrics-provider (the adapter the platform installs); "
        "without one the HPA can never scale down"
    ]


def test_queue_component_with_the_wrong_provider_fails(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh(QUEUE)
    (ns,) = k8s_objects.find(objects, "Namespace", "inference")
    ns["metadata"]["annotations"][k8s_policies.EXTERNAL_METRICS_PROVIDER_ANNOTATION] = "prometheus-adapter"
    found = _violations("metrics-providers", "eks-prod", objects)
    assert any("is served by the Datadog Cluster Agent, not prometheus-adapter" in v for v in found)


def test_queue_component_without_its_datadog_metric_fails(fresh: Callable[[str], list[Obj]]) -> None:
    objects = _without(fresh(QUEUE), "DatadogMetric", "image-classifier-queue-depth")
    assert _violations("metrics-providers", "eks-prod", objects) == [
        "HorizontalPodAutoscaler/image-classifier: reads datadogmetric@inference:image-classifier-queue-depth "
        "but no DatadogMetric inference:image-classifier-queue-depth is rendered"
    ]


def test_queue_component_without_monitoring_fails(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh(QUEUE)
    (dep,) = k8s_objects.find(objects, "Deployment", "image-classifier")
    dep["spec"]["template"]["metadata"]["annotations"] = {}
    found = _violations("metrics-providers", "eks-prod", objects)
    assert any("no Datadog openmetrics check on Deployment/image-classifier collects it" in v for v in found)


def test_a_pods_metric_needs_a_custom_metrics_provider(fresh: Callable[[str], list[Obj]]) -> None:
    """The prometheus-adapter alternative must be declared the same way."""
    objects = fresh("eks-prod")
    hpa = k8s_objects.hpa_for(objects, "image-classifier")
    assert hpa is not None
    hpa["spec"]["metrics"].append(
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "image_classifier_queue_depth"},
                "target": {"type": "AverageValue", "averageValue": "8"},
            },
        }
    )
    found = _violations("metrics-providers", "eks-prod", objects)
    assert "declares no eks-inference.io/custom-metrics-provider" in found[0]
    (ns,) = k8s_objects.find(objects, "Namespace", "inference")
    ns["metadata"]["annotations"][k8s_policies.CUSTOM_METRICS_PROVIDER_ANNOTATION] = "prometheus-adapter"
    assert k8s_policies.check_metrics_providers("eks-prod", objects) == []


def test_a_datadog_metric_with_an_unknown_field_fails_its_schema(rendered: dict[str, list[Obj]]) -> None:
    (dm,) = k8s_objects.find(rendered[QUEUE], "DatadogMetric")
    broken = {**dm, "spec": {**dm["spec"], "querry": "typo"}}
    (error,) = schema.schema_errors([broken])
    assert "querry" in error


# --- the platform contract (manifests/platform-contract.yaml) -----------------------------------------


def _edited_contract(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit: Callable[[Obj], None]) -> None:
    data = yaml.safe_load(platform.CONTRACT_PATH.read_text())
    edit(data["datadog"])
    path = tmp_path / "platform-contract.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setattr(platform, "CONTRACT_PATH", path)


def test_queue_depth_query_names_its_cluster_and_staging_differs_from_prod(rendered: dict[str, list[Obj]]) -> None:
    """Both clusters send eks_inference.image_classifier_queue_depth from the same namespace and Deployment."""
    queries = {}
    for env, overlay in infra_settings.ENV_OVERLAYS.items():
        objects = (
            rendered[QUEUE] if overlay == "eks-prod" else render.render_with_components(overlay, [QUEUE_COMPONENT])
        )
        (dm,) = k8s_objects.find(objects, "DatadogMetric")
        queries[env] = dm["spec"]["query"]
        cluster = infra_settings.environment(env).cluster_name
        assert f"kube_cluster_name:{cluster}" in queries[env].split("{")[1].rstrip("}").split(",")
        assert k8s_policies.check_platform_contract(overlay, objects) == []
    assert queries["staging"] != queries["prod"]


def test_an_unscoped_query_fails(fresh: Callable[[str], list[Obj]]) -> None:
    """The query as it was: namespace and Deployment, no cluster."""
    objects = fresh(QUEUE)
    (dm,) = k8s_objects.find(objects, "DatadogMetric")
    dm["spec"]["query"] = (
        "sum:eks_inference.image_classifier_queue_depth{kube_namespace:inference,kube_deployment:image-classifier}"
    )
    (found,) = _violations("platform-contract", "eks-prod", objects)
    assert "is not scoped to this cluster (kube_cluster_name:eks-inference-prod)" in found


def test_the_other_clusters_name_fails(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh(QUEUE)
    (dm,) = k8s_objects.find(objects, "DatadogMetric")
    dm["spec"]["query"] = dm["spec"]["query"].replace("eks-inference-prod", "eks-inference-staging")
    (found,) = _violations("platform-contract", "eks-prod", objects)
    assert "not scoped to this cluster" in found


def test_an_agent_that_does_not_tolerate_the_gpu_taint_fails(
    rendered: dict[str, list[Obj]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert k8s_policies.check_platform_contract("eks-prod", rendered["eks-prod"]) == []
    _edited_contract(tmp_path, monkeypatch, lambda d: d["agent"].update(tolerations=[]))
    assert _violations("platform-contract", "eks-prod", rendered["eks-prod"]) == [
        "platform-contract.yaml: the Datadog Agent does not tolerate nvidia.com/gpu=true:NoSchedule of node group "
        "gpu-t4; its nodes would send no DCGM or queue-depth metrics"
    ]


def test_a_service_above_the_agents_priority_fails(
    rendered: dict[str, list[Obj]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (pc,) = k8s_objects.find(rendered["eks-prod"], "PriorityClass")
    _edited_contract(tmp_path, monkeypatch, lambda d: d["agent"].update(priority=int(pc["value"]) - 1))
    found = _violations("platform-contract", "eks-prod", rendered["eks-prod"])
    assert found == [
        f"Deployment/{name}: priority {pc['value']} (eks-inference-serving) exceeds the Datadog Agent's "
        f"{int(pc['value']) - 1} (datadog-agent, platform-contract.yaml); its pods would preempt the Agent on a "
        "full node"
        for name in k8s_policies.SERVICES
    ]


def test_a_service_at_a_system_priority_fails(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-prod")
    (dep,) = k8s_objects.find(objects, "Deployment", "text-classifier")
    dep["spec"]["template"]["spec"]["priorityClassName"] = "system-node-critical"
    (found,) = _violations("platform-contract", "eks-prod", objects)
    assert found.startswith("Deployment/text-classifier: priority 2000001000 (system-node-critical) exceeds")


def test_the_cluster_agent_must_serve_what_the_overlay_reads(
    rendered: dict[str, list[Obj]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_provider(d: Obj) -> None:
        d["clusterAgent"].update(externalMetricsProvider=False, datadogMetrics=False)

    _edited_contract(tmp_path, monkeypatch, no_provider)
    assert _violations("platform-contract", "eks-prod", rendered[QUEUE]) == [
        "Namespace/inference declares eks-inference.io/external-metrics-provider=datadog-cluster-agent, but "
        "platform-contract.yaml does not promise the Cluster Agent's external metrics provider",
        "1 DatadogMetrics rendered, but platform-contract.yaml does not promise DatadogMetric support",
    ]
