"""Where each workload can be scheduled, evaluated from the rendered overlays against manifests/nodegroups.yaml."""

from __future__ import annotations

from typing import Any

import pytest

from ops.images import versions as image_versions
from ops.k8s import nodegroups, placement, policies, render

Obj = dict[str, Any]
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}


def test_nodegroups_contract_is_what_the_components_select_on() -> None:
    groups = {g.role: g for g in nodegroups.load_nodegroups().values()}
    assert groups["cpu"].labels["workload-class"] == "cpu"
    assert groups["cpu"].labels["eks.amazonaws.com/nodegroup"] == "cpu-general"
    assert groups["gpu"].labels["k8s.amazonaws.com/accelerator"] == "nvidia-tesla-t4"
    assert groups["gpu"].taints == (GPU_TAINT,)
    accelerators = {g["accelerator_label"] for g in image_versions.load_versions()["gpus"]}
    assert groups["gpu"].labels["k8s.amazonaws.com/accelerator"] in accelerators


@pytest.mark.parametrize("overlay", [*render.EKS_OVERLAYS, *(f"eks-prod+{c}" for c in render.OPTIONAL_COMPONENTS)])
def test_eks_placement(overlay: str, rendered: dict[str, list[Obj]]) -> None:
    headroom = {"Deployment/gpu-headroom": ["gpu-t4"]} if overlay.endswith("+gpu-headroom") else {}
    (autoscaler,) = policies.node_autoscalers(rendered[overlay])  # the overlay's choice: CA or Karpenter
    assert placement.placement(rendered[overlay]) == {
        "Deployment/image-classifier": ["gpu-t4"],
        "Deployment/text-classifier": ["cpu-general"],
        policies.NODE_AUTOSCALERS[autoscaler]: ["cpu-general"],
        "DaemonSet/nvidia-device-plugin": ["gpu-t4"],
        "DaemonSet/dcgm-exporter": ["gpu-t4"],
        **headroom,
    }


def test_local_has_no_gpu_placement(rendered: dict[str, list[Obj]]) -> None:
    # Nothing in local tolerates the GPU taint, so on the EKS node groups it could only use CPU nodes.
    assert placement.placement(rendered["local"]) == {
        "Deployment/image-classifier": ["cpu-general"],
        "Deployment/text-classifier": ["cpu-general"],
    }


@pytest.mark.parametrize(
    ("tolerations", "expected"),
    [
        ([], False),
        ([{"key": "nvidia.com/gpu", "operator": "Exists"}], True),
        ([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute"}], False),
        ([{"key": "nvidia.com/gpu", "operator": "Equal", "value": "false"}], False),
        ([{"key": "nvidia.com/gpu", "value": "true"}], True),  # operator defaults to Equal
        ([{"operator": "Exists"}], True),
        ([{"key": "other", "operator": "Exists"}], False),
    ],
)
def test_toleration_matching(tolerations: list[Obj], expected: bool) -> None:
    assert placement.tolerates(tolerations, GPU_TAINT) is expected


def test_extended_resources_must_exist_on_the_group() -> None:
    cpu = next(g for g in nodegroups.load_nodegroups().values() if g.role == "cpu")
    gpu_pod: Obj = {"containers": [{"name": "x", "resources": {"limits": {"nvidia.com/gpu": 1}}}]}
    cpu_pod: Obj = {"containers": [{"name": "x", "resources": {"limits": {"cpu": "1"}}}]}
    assert not placement.fits_nodegroup(gpu_pod, cpu)
    assert placement.fits_nodegroup(cpu_pod, cpu)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ({"key": "workload-class", "operator": "In", "values": ["cpu", "x"]}, True),
        ({"key": "workload-class", "operator": "NotIn", "values": ["cpu"]}, False),
        ({"key": "k8s.amazonaws.com/accelerator", "operator": "DoesNotExist"}, True),
        ({"key": "k8s.amazonaws.com/accelerator", "operator": "Exists"}, False),
    ],
)
def test_node_affinity_operators(expression: Obj, expected: bool) -> None:
    cpu = next(g for g in nodegroups.load_nodegroups().values() if g.role == "cpu")
    spec = {
        "containers": [],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [expression]}]
                }
            }
        },
    }
    assert placement.fits_nodegroup(spec, cpu) is expected
