"""The parity cluster's manifests and nodes, offline: eks-prod + components/kind-parity, nodes from nodegroups.yaml."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import yaml

from ops.k8s import kind, nodegroups, placement, policies, render
from ops.k8s import parity as parity_mod

Obj = dict[str, Any]
PARITY = [render.PARITY_COMPONENT]


@pytest.fixture(scope="module")
def prod() -> list[Obj]:
    return render.render("eks-prod")


@pytest.fixture(scope="module")
def parity() -> list[Obj]:
    return render.render_with_components("eks-prod", PARITY)


def _key(o: Obj) -> tuple[str, str, str]:
    name = o["metadata"]["name"]
    if o["kind"] == "ConfigMap" and name.startswith("image-classifier-config-"):
        name = "image-classifier-config"  # the content hash changes with the merged setting
    return o["kind"], o["metadata"].get("namespace", ""), name


def test_parity_passes_every_policy() -> None:
    """Prod's rules hold on the parity render; kube-router (cluster-addons.yaml) is the engine on kind."""
    report = policies.validate_overlay("eks-prod", PARITY)
    assert report.overlay == "eks-prod+kind-parity"
    assert report.ok, (report.render_error, report.schema_errors, report.policy_violations)


def test_parity_differs_from_prod_only_where_the_component_says(prod: list[Obj], parity: list[Obj]) -> None:
    """Everything else is prod's: affinity, taints, spread, PDBs, priority, quota, NetworkPolicies, probes, drain."""
    a, b = {_key(o): o for o in prod}, {_key(o): o for o in parity}
    assert set(a) == set(b)
    changed = {k for k in a if a[k] != b[k]}
    assert changed == {
        ("ConfigMap", "inference", "image-classifier-config"),
        ("Deployment", "inference", "image-classifier"),
        ("Deployment", "inference", "text-classifier"),
        ("HorizontalPodAutoscaler", "inference", "image-classifier"),
        ("HorizontalPodAutoscaler", "inference", "text-classifier"),
    }
    cm = ("ConfigMap", "inference", "image-classifier-config")
    assert {k: v for k, v in b[cm]["data"].items() if a[cm]["data"].get(k) != v} == {
        "IMAGE_CLASSIFIER_DEVICE": "cpu",
        "IMAGE_CLASSIFIER_FETCH_ALLOWED_HOSTS": "192.0.2.10,10.255.0.10",
    }
    assert b[cm]["data"]["IMAGE_CLASSIFIER_SPLIT"] == "true"  # prod's engine/front split runs in the parity pods
    assert "IMAGE_CLASSIFIER_FRONTS" not in b[cm]["data"]  # FRONTS=0: the 2-core limit gives 1 front + the engine
    for name in policies.SERVICES:  # only the HPA's bounds, and the image HPA's scale-down stabilization
        key = ("HorizontalPodAutoscaler", "inference", name)
        before_h, after_h = a[key]["spec"], b[key]["spec"]
        assert {k for k in before_h if before_h[k] != after_h[k]} <= {"minReplicas", "maxReplicas", "behavior"}
        assert after_h["behavior"]["scaleUp"] == before_h["behavior"]["scaleUp"]
        down = {k: v for k, v in after_h["behavior"]["scaleDown"].items() if k != "stabilizationWindowSeconds"}
        assert down == {k: v for k, v in before_h["behavior"]["scaleDown"].items() if k != "stabilizationWindowSeconds"}
    for name in policies.SERVICES:
        key = ("Deployment", "inference", name)
        before, after = a[key]["spec"]["template"]["spec"], b[key]["spec"]["template"]["spec"]
        before_c, after_c = before["containers"][0], after["containers"][0]
        assert after_c["image"] == f"eks-inference/{name}:dev-cpu"
        limits = {k: v for k, v in before_c["resources"]["limits"].items() if k != "cpu"}
        requests = {k: v for k, v in before_c["resources"]["requests"].items() if k != "cpu"}
        # A laptop node's cores: only the CPU request and limit shrink (the GPU stays: advertise_devices).
        after_cpu = {part: after_c["resources"][part]["cpu"] for part in ("requests", "limits")}
        assert after_c["resources"] == {
            "limits": {**limits, "cpu": after_cpu["limits"]},
            "requests": {**requests, "cpu": after_cpu["requests"]},
        }
        if name == "image-classifier":  # fits a kind node's 2 cores; the limit sizes the split's fronts
            assert after_cpu == {"requests": "400m", "limits": "2"}
        else:
            assert after_c["resources"]["limits"]["cpu"] == before_c["resources"]["limits"]["cpu"]
        assert after.get("volumes") == before.get("volumes"), name  # the split's memory-backed /dev/shm
        assert after_c.get("volumeMounts") == before_c.get("volumeMounts"), name
        for field in ("affinity", "tolerations", "topologySpreadConstraints", "priorityClassName"):
            assert after.get(field) == before.get(field), (name, field)
        for field in ("startupProbe", "readinessProbe", "livenessProbe", "lifecycle"):
            assert after_c.get(field) == before_c.get(field), (name, field)


def test_the_component_maps_the_images_eks_prod_names() -> None:
    component = yaml.safe_load((render.COMPONENTS_DIR / render.PARITY_COMPONENT / "kustomization.yaml").read_text())
    overlay = yaml.safe_load((render.OVERLAYS_DIR / "eks-prod" / "kustomization.yaml").read_text())
    assert {i["name"] for i in component["images"]} == {i["newName"] for i in overlay["images"]}


def test_parity_nodes_are_the_node_groups() -> None:
    """Generated, not restated: each kind node carries its group's labels and taints, plus a zone of the group."""
    config = kind.parity_config()
    groups = nodegroups.load_nodegroups()
    wanted = yaml.safe_load(kind.PARITY_CONFIG.read_text())["nodes"]
    assert [n["labels"]["eks.amazonaws.com/nodegroup"] for n in config["nodes"]] == [
        g for g, count in wanted.items() for _ in range(count)
    ]
    assert config["nodes"][0]["role"] == "control-plane"
    assert {n["role"] for n in config["nodes"][1:]} == {"worker"}
    for node in config["nodes"]:
        group = groups[node["labels"]["eks.amazonaws.com/nodegroup"]]
        assert {k: v for k, v in node["labels"].items() if k != kind.ZONE_LABEL} == group.labels
        assert node["labels"][kind.ZONE_LABEL] in group.zones
        (patch,) = [yaml.safe_load(p) for p in node["kubeadmConfigPatches"]]
        assert patch["nodeRegistration"]["taints"] == list(group.taints)
    assert config["kubeadmConfigPatches"] == yaml.safe_load(kind.CLUSTER_CONFIG.read_text())["kubeadmConfigPatches"]


def test_workloads_fit_the_parity_nodes_as_they_fit_the_node_groups(prod: list[Obj], parity: list[Obj]) -> None:
    """GPU-class workloads only on the gpu-t4 stand-ins, CPU ones never there: the production placement."""
    groups = nodegroups.load_nodegroups()
    as_nodes = []
    for i, node in enumerate(kind.parity_config()["nodes"]):
        group = groups[node["labels"]["eks.amazonaws.com/nodegroup"]]
        (patch,) = [yaml.safe_load(p) for p in node["kubeadmConfigPatches"]]
        taints = tuple(patch["nodeRegistration"]["taints"])
        as_nodes.append(dataclasses.replace(group, name=f"{group.name}#{i}", labels=node["labels"], taints=taints))
    where = placement.placement(parity, as_nodes)
    expected = placement.placement(prod)
    for workload, fitting in where.items():
        assert sorted({n.split("#")[0] for n in fitting}) == sorted(expected[workload]), workload
    assert {n.split("#")[0] for n in where["Deployment/image-classifier"]} == {"gpu-t4"}
    assert {n.split("#")[0] for n in where["Deployment/text-classifier"]} == {"cpu-general"}


def test_each_service_image_is_loaded_where_its_pods_can_run(parity: list[Obj]) -> None:
    """`invoke up --parity` loads the ~6 GB images only onto the node groups prod's rules place each service on."""
    assert parity_mod.service_node_groups(parity) == {
        "image-classifier": ["gpu-t4"],
        "text-classifier": ["cpu-general"],
    }
