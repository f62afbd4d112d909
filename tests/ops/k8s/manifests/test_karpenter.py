"""Karpenter as the node autoscaler: one per overlay, NodePools and EC2NodeClasses generated from nodegroups.yaml, and
the policies that catch a pool that would put pods where they must not go or hold too few GPUs."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from ops.core import REPO_ROOT
from ops.infra import settings
from ops.k8s import karpenter, policies, render, schema
from ops.k8s.nodegroups import load_nodegroups
from ops.k8s.objects import find
from ops.toolchain import tools

Obj = dict[str, Any]
CHOICES = {"eks-prod": "cluster-autoscaler", "eks-staging": karpenter.CONTROLLER}


def _one(objects: list[Obj], kind: str, name: str) -> Obj:
    (obj,) = find(objects, kind, name)
    return obj


@pytest.mark.parametrize("overlay", sorted(CHOICES))
def test_each_eks_overlay_runs_exactly_its_chosen_autoscaler(overlay: str, rendered: dict[str, list[Obj]]) -> None:
    assert policies.node_autoscalers(rendered[overlay]) == [CHOICES[overlay]]
    env = next(e for e, o in settings.ENV_OVERLAYS.items() if o == overlay)
    assert settings.environment(env).node_autoscaler == CHOICES[overlay]


@pytest.mark.parametrize(("overlay", "other"), [("eks-prod", "karpenter"), ("eks-staging", "cluster-autoscaler")])
def test_an_overlay_with_both_autoscalers_is_refused(overlay: str, other: str) -> None:
    report = policies.validate_overlay(overlay, [other])
    assert report.render_error is None
    assert report.policy_violations["node-autoscaler"] == [
        "the overlay renders both cluster-autoscaler and karpenter: choose one (its components/ entry) per overlay"
    ]
    assert not report.ok


def test_an_eks_overlay_without_an_autoscaler_is_refused(fresh: Callable[[str], list[Obj]]) -> None:
    objects = [o for o in fresh("eks-staging") if o["kind"] != "Deployment" or o["metadata"]["name"] != "karpenter"]
    assert policies.check_node_autoscaler("eks-staging", objects) == [
        "no node autoscaler: list one of components/cluster-autoscaler or components/karpenter"
    ]


def test_infra_refuses_an_overlay_listing_both() -> None:
    kustomization = {
        "components": ["../../manifests/components/cluster-autoscaler", "../../manifests/components/karpenter"]
    }
    with pytest.raises(settings.InfraError, match="list exactly one"):
        settings.node_autoscaler(kustomization, "eks-x")


def test_nodepools_restate_nothing_nodegroups_yaml_says(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["eks-staging"]
    groups = load_nodegroups()
    gpu, cpu = groups["gpu-t4"], groups["cpu-general"]
    pool = _one(objects, "NodePool", "gpu-t4")
    template = pool["spec"]["template"]
    assert template["metadata"]["labels"] == {
        "workload-class": "gpu",
        "k8s.amazonaws.com/accelerator": "nvidia-tesla-t4",
    }
    assert template["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}]
    reqs = {r["key"]: r["values"] for r in template["spec"]["requirements"]}
    assert reqs[karpenter.INSTANCE_FAMILY_LABEL] == list(gpu.families) == ["g4dn"]
    assert reqs[karpenter.INSTANCE_GPU_COUNT_LABEL] == ["1"]
    assert reqs[karpenter.CAPACITY_TYPE_LABEL] == ["on-demand"]
    assert reqs["topology.kubernetes.io/zone"] == list(gpu.zones)
    assert (
        pool["spec"]["limits"]
        == {"nvidia.com/gpu": str(gpu.total_max_size * gpu.gpus_per_node)}
        == {"nvidia.com/gpu": "6"}
    )
    assert "namespace" not in pool["metadata"]  # cluster-scoped, whatever the namespace transformer does
    cpu_pool = _one(objects, "NodePool", "cpu-general")
    assert "taints" not in cpu_pool["spec"]["template"]["spec"]
    assert cpu_pool["spec"]["limits"] == {"cpu": "32"}  # (10 - 2) x 4 cores above the managed floor
    assert {r["key"]: r["values"] for r in cpu_pool["spec"]["template"]["spec"]["requirements"]}[
        karpenter.INSTANCE_FAMILY_LABEL
    ] == list(cpu.families)


def test_a_nodegroups_change_reaches_the_nodepool(rendered: dict[str, list[Obj]]) -> None:
    groups = load_nodegroups()
    groups["gpu-t4"] = dataclasses.replace(groups["gpu-t4"], max_size=3, instance_families=("g4dn", "g6"))
    kustomized = yaml.safe_load_all(render.kustomize_text("eks-staging"))
    objects = [o for o in kustomized if o]
    karpenter.generate(objects, groups)
    pool = _one(objects, "NodePool", "gpu-t4")
    assert pool["spec"]["limits"] == {"nvidia.com/gpu": "9"}
    families = next(
        r["values"]
        for r in pool["spec"]["template"]["spec"]["requirements"]
        if r["key"] == karpenter.INSTANCE_FAMILY_LABEL
    )
    assert families == ["g4dn", "g6"]


def test_the_raw_kustomize_skeletons_launch_nothing() -> None:
    objects = [o for o in yaml.safe_load_all(render.kustomize_text("eks-staging")) if o]
    limits = {p["metadata"]["name"]: p["spec"]["limits"] for p in find(objects, "NodePool")}
    assert limits == {"gpu-t4": {"nvidia.com/gpu": "0"}, "cpu-general": {"cpu": "0"}}


def test_ec2nodeclasses_pin_the_ami_and_imdsv2(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["eks-staging"]
    release = policies.versions()["eks"]["gpu_ami_release"]
    gpu = _one(objects, "EC2NodeClass", "gpu-t4")["spec"]
    assert gpu["amiSelectorTerms"] == [{"name": f"amazon-eks-node-al2023-x86_64-nvidia-{release}", "owner": "amazon"}]
    assert gpu["metadataOptions"]["httpTokens"] == "required"
    assert gpu["metadataOptions"]["httpPutResponseHopLimit"] == 1
    assert gpu["role"] == karpenter.node_role_name("eks-inference-staging") == "eks-inference-staging-karpenter-node"
    assert gpu["subnetSelectorTerms"] == [{"tags": {karpenter.DISCOVERY_TAG: "eks-inference-staging"}}]
    assert gpu["blockDeviceMappings"][0]["ebs"]["volumeSize"] == "100Gi"
    cpu = _one(objects, "EC2NodeClass", "cpu-general")["spec"]
    assert cpu["amiSelectorTerms"][0]["name"] == f"amazon-eks-node-al2023-x86_64-standard-{release}"


def test_the_controller_image_is_the_pinned_release(rendered: dict[str, list[Obj]]) -> None:
    dep = _one(rendered["eks-staging"], "Deployment", "karpenter")
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == f"{karpenter.CONTROLLER_IMAGE}:1.15.0"
    # The same core release as the kwok build the behaviour tests run.
    from ops.toolchain import tools

    assert tools.load_manifest().tools["karpenter-kwok"].version == f"v{karpenter.version()}"


def test_schemas_are_the_release_crds_and_strict(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-staging")
    pool = _one(objects, "NodePool", "gpu-t4")
    node_class = _one(objects, "EC2NodeClass", "gpu-t4")
    assert schema.schema_errors([pool, node_class]) == []
    pool["spec"]["disruption"]["consolidateAfterr"] = "1m"
    node_class["spec"]["metadataOptions"]["httpTokens"] = "sometimes"
    errors = schema.schema_errors([pool, node_class])
    assert any("NodePool/gpu-t4: spec.disruption" in e and "consolidateAfterr" in e for e in errors), errors
    assert any("EC2NodeClass/gpu-t4: spec.metadataOptions.httpTokens" in e for e in errors), errors


def test_a_gpu_limit_below_the_rollout_peak_is_refused(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-staging")
    peak = policies.gpu_peak(objects)
    assert policies.check_karpenter_pools("eks-staging", objects) == []
    _one(objects, "NodePool", "gpu-t4")["spec"]["limits"]["nvidia.com/gpu"] = str(peak - 1)
    assert policies.check_karpenter_pools("eks-staging", objects) == [
        f"the GPU NodePools' limits hold {peak - 1} nvidia.com/gpu but a rollout at the HPA maximum needs {peak} "
        "(maxReplicas + maxSurge): past the limit Karpenter launches nothing and the rollout stalls"
    ]


def test_a_cpu_pool_that_gpu_agents_fit_is_refused(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-staging")
    labels = _one(objects, "NodePool", "cpu-general")["spec"]["template"]["metadata"]["labels"]
    labels["k8s.amazonaws.com/accelerator"] = "nvidia-tesla-t4"
    found = policies.check_karpenter_pools("eks-staging", objects)
    wrong = "may be scheduled on NodePools ['cpu-general'], should only run on GPU NodePools"
    assert f"DaemonSet/nvidia-device-plugin: {wrong}" in found


def test_a_gpu_pool_without_its_taint_is_refused(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-staging")
    spec = _one(objects, "NodePool", "gpu-t4")["spec"]["template"]["spec"]
    del spec["taints"]
    spec["requirements"] = [r for r in spec["requirements"] if r["key"] != "topology.kubernetes.io/zone"]
    labels = _one(objects, "NodePool", "gpu-t4")["spec"]["template"]["metadata"]["labels"]
    labels["workload-class"] = "cpu"
    found = policies.check_karpenter_pools("eks-staging", objects)
    assert any(
        f.startswith("Deployment/text-classifier: may be scheduled on the GPU NodePools ['gpu-t4']") for f in found
    )


def test_imdsv1_or_a_hop_limit_of_two_is_refused(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-staging")
    _one(objects, "EC2NodeClass", "gpu-t4")["spec"]["metadataOptions"]["httpPutResponseHopLimit"] = 2
    assert policies.check_karpenter_pools("eks-staging", objects) == [
        "EC2NodeClass/gpu-t4: metadataOptions must be httpTokens required, httpPutResponseHopLimit 1"
    ]


def test_kwok_instance_types_offer_what_the_generated_pools_ask_for() -> None:
    import json

    types = {t["name"]: t for t in json.loads(karpenter.kwok_instance_types())}
    assert set(types) == {"g4dn.xlarge", "m5.xlarge", "m6i.xlarge", "m7i.xlarge"}
    gpu = types["g4dn.xlarge"]
    assert gpu["resources"]["nvidia.com/gpu"] == "1"
    assert sorted(o["Requirements"][0]["values"][0] for o in gpu["offerings"]) == list(
        load_nodegroups()["gpu-t4"].zones
    )


BEHAVIOUR_TESTS = REPO_ROOT / "tests" / "ops" / "k8s" / "cluster" / "test_karpenter.py"
# What would keep a test from running: a skip mark, a skip call, a skip on a missing import, or a deselection.
SKIPPING = re.compile(r"pytest\.(?:mark\.)?skip|importorskip|skipif|pytest\.mark\.xfail|deselect")


def test_ci_builds_karpenter_kwok_and_runs_the_behaviour_tests_unskipped() -> None:
    """.ci/run ends in `invoke test`, which installs every tool (karpenter-kwok is required: a build that fails
    fails the run) and runs pytest with no marker expression; the behaviour tests carry no way to skip."""
    assert (REPO_ROOT / ".ci" / "run").read_text().rstrip().endswith("uv run invoke test")
    assert tools.load_manifest().tools["karpenter-kwok"].required
    pytest_options = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "-m" not in str(pytest_options["addopts"]).split()
    code = BEHAVIOUR_TESTS.read_text()
    assert not SKIPPING.findall(code)
    tests = re.findall(r"^def (test_\w+)\(", code, flags=re.MULTILINE)
    assert len(tests) == 5, tests
