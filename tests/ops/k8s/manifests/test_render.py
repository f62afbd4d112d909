"""Every overlay renders with the pinned Kustomize, without warnings; deprecated fields are refused."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from ops import core
from ops.k8s import objects as k8s_objects
from ops.k8s import render


def test_kustomize_is_the_pinned_version() -> None:
    with (core.REPO_ROOT / "tools.toml").open("rb") as fh:
        pinned = tomllib.load(fh)["tools"]["kustomize"]["version"]
    assert render.kustomize_version() == pinned == render.pinned_kustomize_version()


def test_the_overlays_are_the_documented_three() -> None:
    assert render.available_overlays() == sorted(render.OVERLAYS)


@pytest.mark.parametrize("overlay", render.OVERLAYS)
def test_overlay_renders_and_text_matches_objects(overlay: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    text = render.render_text(overlay)
    assert [d for d in yaml.safe_load_all(text) if d] == rendered[overlay]
    kinds = {o["kind"] for o in rendered[overlay]}
    assert {"Namespace", "Deployment", "Service", "ServiceAccount", "ConfigMap"} <= kinds


@pytest.mark.parametrize("component", render.OPTIONAL_COMPONENTS)
def test_optional_components_render_on_top_of_eks_prod(
    component: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    objects = rendered[f"eks-prod+{component}"]
    assert objects != rendered["eks-prod"]


def test_gpu_queue_component_adds_the_queue_metric_and_keeps_cpu(rendered: dict[str, list[dict[str, Any]]]) -> None:
    hpa = k8s_objects.hpa_for(rendered["eks-prod+gpu-queue-autoscaling"], "image-classifier")
    assert hpa is not None
    metrics = {(x["type"], (x.get("resource") or x["external"]["metric"])["name"]) for x in hpa["spec"]["metrics"]}
    assert metrics == {("Resource", "cpu"), ("External", "datadogmetric@inference:image-classifier-queue-depth")}
    (dm,) = k8s_objects.find(
        rendered["eks-prod+gpu-queue-autoscaling"], "DatadogMetric", "image-classifier-queue-depth"
    )
    assert dm["metadata"]["namespace"] == "inference"
    assert dm["spec"]["query"].startswith("sum:eks_inference.image_classifier_queue_depth{")
    # Bounds still come from the overlay.
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)


def test_time_slicing_mounts_its_config_into_the_device_plugin(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["eks-prod+nvidia-device-plugin/time-slicing"]
    (ds,) = k8s_objects.find(objects, "DaemonSet", "nvidia-device-plugin")
    (cm,) = [
        o
        for o in k8s_objects.find(objects, "ConfigMap")
        if o["metadata"]["name"].startswith("nvidia-device-plugin-config")
    ]
    spec = ds["spec"]["template"]["spec"]
    assert {"name": "plugin-config", "configMap": {"name": cm["metadata"]["name"]}} in spec["volumes"]
    env = {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
    config = yaml.safe_load(cm["data"]["config.yaml"])
    assert env["CONFIG_FILE"].endswith("/config.yaml")
    # Keeping the resource name is what lets the gpu component's nvidia.com/gpu request still match.
    assert config["sharing"]["timeSlicing"]["renameByDefault"] is False
    assert config["sharing"]["timeSlicing"]["resources"][0]["name"] == "nvidia.com/gpu"


def _write(tmp: Path, kustomization: str, resources: dict[str, str]) -> Path:
    (tmp / "kustomization.yaml").write_text(textwrap.dedent(kustomization))
    for name, text in resources.items():
        (tmp / name).write_text(textwrap.dedent(text))
    return tmp


CONFIGMAP = """
    apiVersion: v1
    kind: ConfigMap
    metadata: {name: demo}
    data: {a: "1"}
"""


def test_a_deprecated_field_is_a_failure_not_a_warning(tmp_path: Path) -> None:
    path = _write(tmp_path, "resources: [cm.yaml]\ncommonLabels: {team: x}\n", {"cm.yaml": CONFIGMAP})
    with pytest.raises(render.KustomizeWarning, match="commonLabels"):
        render.render_text(path)


def test_the_same_kustomization_without_it_renders(tmp_path: Path) -> None:
    path = _write(tmp_path, "resources: [cm.yaml]\nlabels: [{pairs: {team: x}}]\n", {"cm.yaml": CONFIGMAP})
    (obj,) = render.render(path)
    assert obj["metadata"]["labels"] == {"team": "x"}


def test_a_broken_kustomization_raises(tmp_path: Path) -> None:
    path = _write(tmp_path, "resources: [missing.yaml]\n", {})
    with pytest.raises(render.ManifestError) as err:
        render.render_text(path)
    assert not isinstance(err.value, render.KustomizeWarning)


def test_an_unknown_overlay_name_is_refused() -> None:
    with pytest.raises(render.ManifestError, match="unknown overlay 'qa'"):
        render.render_text("qa")


def test_addons_keep_kube_system_and_services_get_the_overlay_namespace(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for obj in rendered["eks-prod"]:
        if obj["kind"] in ("Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass"):
            assert "namespace" not in obj["metadata"]
            continue
        labels = obj["metadata"].get("labels", {})
        expected = "inference" if labels.get("app.kubernetes.io/part-of") == "eks-inference" else "kube-system"
        assert obj["metadata"]["namespace"] == expected, k8s_objects.ref(obj)
    crb = k8s_objects.find(rendered["eks-prod"], "ClusterRoleBinding", "cluster-autoscaler")[0]
    assert crb["subjects"] == [{"kind": "ServiceAccount", "name": "cluster-autoscaler", "namespace": "kube-system"}]


def test_the_venv_kubectl_renders_identically() -> None:
    # Whichever Kustomize ops.k8s.render picked (cached standalone or kubectl's), a laptop with only
    # `uv sync` done gets the same YAML.
    kubectl = Path(sys.executable).parent / "kubectl"
    for overlay in render.OVERLAYS:
        proc = subprocess.run(
            [str(kubectl), "kustomize", str(render.OVERLAYS_DIR / overlay)],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        # render_text = Kustomize's output + the derived fields (the GPU Deployment's progressDeadlineSeconds).
        assert render.derive(proc.stdout) == render.render_text(overlay), overlay
