"""Add-on versions in the rendered manifests come from base-images/versions.toml [addons]."""

from __future__ import annotations

from typing import Any

import pytest

from ops.images import versions as image_versions
from ops.k8s import objects as k8s_objects
from ops.k8s import placement, policies, render

Obj = dict[str, Any]


def _image(objects: list[Obj], kind: str, name: str) -> str:
    (obj,) = k8s_objects.find(objects, kind, name)
    image: str = obj["spec"]["template"]["spec"]["containers"][0]["image"]
    return image


@pytest.mark.parametrize("overlay", render.EKS_OVERLAYS)
def test_addon_images_match_the_matrix(overlay: str, rendered: dict[str, list[Obj]]) -> None:
    addons = image_versions.load_versions()["addons"]
    objects = rendered[overlay]
    assert _image(objects, "DaemonSet", "nvidia-device-plugin") == (
        f"nvcr.io/nvidia/k8s-device-plugin:{addons['nvidia_device_plugin']}"
    )
    assert _image(objects, "DaemonSet", "dcgm-exporter") == (
        f"nvcr.io/nvidia/k8s/dcgm-exporter:{addons['dcgm_exporter']}"
    )
    if policies.node_autoscalers(objects) == ["cluster-autoscaler"]:
        assert _image(objects, "Deployment", "cluster-autoscaler") == (
            f"registry.k8s.io/autoscaling/cluster-autoscaler:{addons['cluster_autoscaler']}"
            f"@{addons['cluster_autoscaler_digest']}"
        )
    else:
        assert policies.node_autoscalers(objects) == ["karpenter"]
        assert (
            _image(objects, "Deployment", "karpenter") == f"public.ecr.aws/karpenter/controller:{addons['karpenter']}"
        )


def test_cluster_autoscaler_minor_is_the_eks_minor() -> None:
    ca = image_versions.load_versions()["addons"]["cluster_autoscaler"].lstrip("v")
    assert ".".join(ca.split(".")[:2]) == image_versions.load_versions()["eks"]["kubernetes_minor"]


@pytest.mark.parametrize("overlay", render.EKS_OVERLAYS)
def test_service_images_are_pinned_release_tags(overlay: str, rendered: dict[str, list[Obj]]) -> None:
    for name in policies.SERVICES:
        image = _image(rendered[overlay], "Deployment", name)
        assert image.startswith(f"111122223333.dkr.ecr.us-east-1.amazonaws.com/eks-inference/{name}:")
        tag = k8s_objects.image_tag(image)
        assert tag is not None
        assert tag.startswith(("0.", "1.", "2."))
        assert tag.endswith("-cuda" if name == "image-classifier" else "-cpu")


def test_local_uses_the_tilt_image_names(rendered: dict[str, list[Obj]]) -> None:
    for name in policies.SERVICES:
        assert _image(rendered["local"], "Deployment", name) == f"eks-inference/{name}:dev-cpu"


@pytest.mark.parametrize("overlay", render.EKS_OVERLAYS)
def test_device_plugin_is_system_node_critical_on_gpu_nodes_only(overlay: str, rendered: dict[str, list[Obj]]) -> None:
    (ds,) = k8s_objects.find(rendered[overlay], "DaemonSet", "nvidia-device-plugin")
    spec = ds["spec"]["template"]["spec"]
    assert spec["priorityClassName"] == "system-node-critical"
    assert ds["metadata"]["namespace"] == "kube-system"
    assert placement.placement([ds]) == {"DaemonSet/nvidia-device-plugin": ["gpu-t4"]}
