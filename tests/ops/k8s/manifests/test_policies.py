"""The policy checks pass on every rendered overlay, and each one catches the mistake it is written for."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from ops.k8s import nodegroups, policies, render
from ops.k8s import objects as k8s_objects

Obj = dict[str, Any]
ALL = [*render.OVERLAYS, *(f"eks-prod+{c}" for c in render.OPTIONAL_COMPONENTS)]


@pytest.mark.parametrize("policy", sorted(policies.POLICIES))
@pytest.mark.parametrize("overlay", ALL)
def test_policy_holds(overlay: str, policy: str, rendered: dict[str, list[Obj]]) -> None:
    assert policies.POLICIES[policy](overlay.split("+")[0], rendered[overlay]) == []


def _container(objects: list[Obj], kind: str, name: str) -> Obj:
    (obj,) = k8s_objects.find(objects, kind, name)
    container: Obj = obj["spec"]["template"]["spec"]["containers"][0]
    return container


def _pod(objects: list[Obj], kind: str, name: str) -> Obj:
    (obj,) = k8s_objects.find(objects, kind, name)
    spec: Obj = obj["spec"]["template"]["spec"]
    return spec


def _violations(policy: str, overlay: str, objects: list[Obj]) -> list[str]:
    found = policies.POLICIES[policy](overlay, objects)
    assert found, f"{policy} missed the planted mistake"
    return found


# --- each policy catches its mistake -------------------------------------------------------------


def _checkov(overlay: str, objects: list[Obj]) -> set[str]:
    """The checkov findings (check id and resource) the `checkov` policy reports, planted mistake required."""
    return {v.split(" (", 1)[0] for v in _violations("checkov", overlay, objects)}


@pytest.mark.parametrize(("which", "check"), [("requests", "CKV_K8S_12"), ("limits", "CKV_K8S_13")])
def test_missing_requests_or_limits(fresh: Callable[[str], list[Obj]], which: str, check: str) -> None:
    objects = fresh("eks-prod")
    del _container(objects, "DaemonSet", "dcgm-exporter")["resources"][which]["memory"]
    assert _checkov("eks-prod", objects) == {f"{check} DaemonSet.kube-system.dcgm-exporter"}


@pytest.mark.parametrize("probe", ["startupProbe", "readinessProbe", "livenessProbe"])
def test_missing_service_probe(fresh: Callable[[str], list[Obj]], probe: str) -> None:
    objects = fresh("local")
    del _container(objects, "Deployment", "text-classifier")[probe]
    assert any(probe in v for v in _violations("service-probes", "local", objects))


def test_liveness_on_readyz_is_refused(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-prod")
    _container(objects, "Deployment", "image-classifier")["livenessProbe"]["httpGet"]["path"] = "/readyz"
    _violations("service-probes", "eks-prod", objects)


def test_addon_without_probes(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-prod")
    del _container(objects, "Deployment", "cluster-autoscaler")["readinessProbe"]
    assert _checkov("eks-prod", objects) == {"CKV_K8S_9 Deployment.kube-system.cluster-autoscaler"}


@pytest.mark.parametrize(
    ("field", "value", "check"),
    [
        ("readOnlyRootFilesystem", False, "CKV_K8S_22"),
        ("allowPrivilegeEscalation", True, "CKV_K8S_20"),
        ("capabilities", {"drop": ["NET_RAW"]}, "CKV_K8S_37"),
        ("seccompProfile", {"type": "Unconfined"}, "CKV_K8S_31"),
    ],
)
def test_security_context_breaks(fresh: Callable[[str], list[Obj]], field: str, value: Any, check: str) -> None:
    objects = fresh("eks-staging")
    pod = _pod(objects, "Deployment", "text-classifier")
    if field == "seccompProfile":
        pod["securityContext"][field] = value
    _container(objects, "Deployment", "text-classifier")["securityContext"][field] = value
    assert f"{check} Deployment.inference.text-classifier" in _checkov("eks-staging", objects)


def test_root_service_is_refused(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-staging")
    for sc in (_pod(objects, "Deployment", "text-classifier")["securityContext"],
               _container(objects, "Deployment", "text-classifier")["securityContext"]):  # fmt: skip
        sc.update(runAsNonRoot=False, runAsUser=0)
    assert "CKV_K8S_23 Deployment.inference.text-classifier" in _checkov("eks-staging", objects)
    assert _violations("service-user", "eks-staging", objects) == [
        "Deployment/text-classifier container text-classifier: runAsUser should be 10001, is 0"
    ]


def test_added_capability_is_refused_even_for_root_exceptions(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-prod")
    _container(objects, "DaemonSet", "dcgm-exporter")["securityContext"]["capabilities"]["add"] = ["SYS_ADMIN"]
    assert "CKV_K8S_39 DaemonSet.kube-system.dcgm-exporter" in _checkov("eks-prod", objects)


def test_tmp_must_be_an_emptydir(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("local")
    _container(objects, "Deployment", "image-classifier")["volumeMounts"] = []
    assert any("/tmp" in v for v in _violations("service-user", "local", objects))


def test_an_exception_is_the_annotation_next_to_its_object(fresh: Callable[[str], list[Obj]]) -> None:
    """Drop the device plugin's annotations: each finding they excused comes back."""
    objects = fresh("eks-prod")
    (plugin,) = k8s_objects.find(objects, "DaemonSet", "nvidia-device-plugin")
    excused = {v.split("=", 1)[0] for k, v in plugin["metadata"]["annotations"].items() if k.startswith("checkov.io/")}
    assert {"CKV_K8S_8", "CKV_K8S_23", "CKV_K8S_43"} <= excused
    del plugin["metadata"]["annotations"]
    assert _checkov("eks-prod", objects) == {f"{c} DaemonSet.kube-system.nvidia-device-plugin" for c in excused}


def test_an_exception_without_a_reason_is_a_finding(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-prod")
    (ca,) = k8s_objects.find(objects, "Deployment", "cluster-autoscaler")
    ca["metadata"]["annotations"]["checkov.io/skip2"] = "CKV_K8S_38"
    assert _violations("checkov", "eks-prod", objects) == [
        "CKV_K8S_38 Deployment.kube-system.cluster-autoscaler (skipped without a reason)"
    ]


@pytest.mark.parametrize(
    "image",
    [
        "111122223333.dkr.ecr.us-east-1.amazonaws.com/eks-inference/image-classifier:latest",
        "eks-inference/image-classifier:dev-cpu",
        "111122223333.dkr.ecr.us-east-1.amazonaws.com/eks-inference/image-classifier:0.1.0-cpu",  # not the CUDA build
    ],
)
def test_latest_or_local_images_outside_local(fresh: Callable[[str], list[Obj]], image: str) -> None:
    objects = fresh("eks-prod")
    _container(objects, "Deployment", "image-classifier")["image"] = image
    _violations("image-tags", "eks-prod", objects)


@pytest.mark.parametrize("overlay", ["local", "eks-prod"])
def test_untagged_or_latest_is_refused_everywhere(fresh: Callable[[str], list[Obj]], overlay: str) -> None:
    for image in ("eks-inference/text-classifier", "eks-inference/text-classifier:latest"):
        objects = fresh(overlay)
        _container(objects, "Deployment", "text-classifier")["image"] = image
        assert "CKV_K8S_14 Deployment.inference.text-classifier" in _checkov(overlay, objects)


def test_device_plugin_unpinned(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-prod")
    _container(objects, "DaemonSet", "nvidia-device-plugin")["image"] = "nvcr.io/nvidia/k8s-device-plugin:latest"
    assert "CKV_K8S_14 DaemonSet.kube-system.nvidia-device-plugin" in _checkov("eks-prod", objects)
    _violations("addon-versions", "eks-prod", objects)


def test_addon_digest_is_required_where_recorded(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-prod")
    ca = _container(objects, "Deployment", "cluster-autoscaler")
    ca["image"] = ca["image"].split("@", 1)[0]
    assert _violations("addon-versions", "eks-prod", objects) == [
        f"Deployment/cluster-autoscaler: image {ca['image']} should be {ca['image']}@"
        f"{policies.versions()['addons']['cluster_autoscaler_digest']} ([addons].cluster_autoscaler)"
    ]
    # ... and checkov, without the annotation an undigested image would need.
    assert "CKV_K8S_43 Deployment.kube-system.cluster-autoscaler" in _checkov("eks-prod", objects)


def test_cpu_workload_requesting_a_gpu(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-prod")
    _container(objects, "Deployment", "text-classifier")["resources"]["limits"]["nvidia.com/gpu"] = 1
    assert _violations("gpu-isolation", "eks-prod", objects) == [
        "Deployment/text-classifier: requests nvidia.com/gpu but is not the GPU workload of an EKS overlay"
    ]


@pytest.mark.parametrize(
    "toleration",
    [
        {"key": "nvidia.com/gpu", "operator": "Exists"},
        {"operator": "Exists"},  # tolerates every taint
        {"key": "nvidia.com/gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
    ],
)
def test_cpu_workload_tolerating_the_gpu_taint(fresh: Callable[[str], list[Obj]], toleration: Obj) -> None:
    objects = fresh("eks-prod")
    _pod(objects, "Deployment", "text-classifier")["tolerations"] = [toleration]
    _violations("gpu-isolation", "eks-prod", objects)


def test_unrelated_toleration_is_fine(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-prod")
    _pod(objects, "Deployment", "text-classifier")["tolerations"] = [{"key": "spot", "operator": "Exists"}]
    assert policies.check_gpu_isolation("eks-prod", objects) == []


def test_gpu_service_without_gpu_in_eks(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-prod")
    del _container(objects, "Deployment", "image-classifier")["resources"]["limits"]["nvidia.com/gpu"]
    assert "limits must have nvidia.com/gpu: 1" in " ".join(_violations("gpu-isolation", "eks-prod", objects))


def test_gpu_affinity_must_list_the_supported_accelerators(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-prod")
    terms = _pod(objects, "Deployment", "image-classifier")["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    terms[0]["matchExpressions"][0]["values"].append("nvidia-tesla-k80")  # not built for (sm_37)
    _violations("gpu-isolation", "eks-prod", objects)


def test_local_must_run_the_image_classifier_on_cpu(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("local")
    (cm,) = [
        o for o in k8s_objects.find(objects, "ConfigMap") if o["metadata"]["name"].startswith("image-classifier-config")
    ]
    cm["data"]["IMAGE_CLASSIFIER_DEVICE"] = "cuda"
    _violations("gpu-isolation", "local", objects)


def test_cpu_workload_without_pool_affinity_could_land_on_gpu_nodes(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-prod")
    pod = _pod(objects, "Deployment", "text-classifier")
    del pod["affinity"]
    # Add the GPU toleration too, else the taint alone keeps it off the GPU group.
    pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    found = _violations("node-pools", "eks-prod", objects)
    assert "Deployment/text-classifier: may be scheduled on ['gpu-t4'], should only run on cpu node groups" in found


def test_gpu_affinity_nothing_matches(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-prod")
    terms = _pod(objects, "Deployment", "image-classifier")["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    terms[0]["matchExpressions"][0]["values"] = ["nvidia-a100"]
    assert "Deployment/image-classifier: fits no node group in nodegroups.yaml" in _violations(
        "node-pools", "eks-prod", objects
    )


@pytest.mark.parametrize(
    ("name", "image"),
    [
        ("cluster-autoscaler", "registry.k8s.io/autoscaling/cluster-autoscaler:v1.33.2"),
        ("dcgm-exporter", "nvcr.io/nvidia/k8s/dcgm-exporter:3.3.9-3.6.1-ubuntu22.04"),
    ],
)
def test_addon_version_drift(fresh: Callable[[str], list[Obj]], name: str, image: str) -> None:
    objects = fresh("eks-prod")
    kind = "Deployment" if name == "cluster-autoscaler" else "DaemonSet"
    _container(objects, kind, name)["image"] = image
    found = _violations("addon-versions", "eks-prod", objects)
    if name == "cluster-autoscaler":
        assert any("must match Kubernetes" in v for v in found)


def test_missing_addon_in_eks(fresh: Callable[[str], list[Obj]]) -> None:
    objects = [o for o in fresh("eks-prod") if o["metadata"]["name"] != "dcgm-exporter"]
    assert _violations("addon-versions", "eks-prod", objects) == ["add-on dcgm-exporter is missing"]


def test_multi_replica_deployment_without_pdb(fresh: Callable[[str], list[Obj]]) -> None:
    objects = [
        o
        for o in fresh("eks-prod")
        if not (o["kind"] == "PodDisruptionBudget" and o["metadata"]["name"] == "text-classifier")
    ]
    assert _violations("disruption", "eks-prod", objects) == [
        "Deployment/text-classifier: runs up to 12 replicas but no PodDisruptionBudget selects it"
    ]


def test_pdb_that_blocks_every_drain(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-prod")
    (pdb,) = k8s_objects.find(objects, "PodDisruptionBudget", "text-classifier")
    pdb["spec"]["minAvailable"] = 3  # == HPA minReplicas
    assert any("minReplicas 3 must be >= " in v for v in _violations("disruption", "eks-prod", objects))


def test_percentage_pdb_is_rounded_up(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-prod")
    (pdb,) = k8s_objects.find(objects, "PodDisruptionBudget", "text-classifier")
    pdb["spec"]["minAvailable"] = "80%"  # ceil(0.8 * 3) = 3
    _violations("disruption", "eks-prod", objects)
    pdb["spec"]["minAvailable"] = "50%"  # ceil(1.5) = 2
    assert policies.check_disruption("eks-prod", objects) == []


def test_pdb_selecting_other_pods_does_not_count(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-prod")
    (pdb,) = k8s_objects.find(objects, "PodDisruptionBudget", "image-classifier")
    pdb["spec"]["selector"] = {"matchLabels": {"app.kubernetes.io/name": "something-else"}}
    _violations("disruption", "eks-prod", objects)


@pytest.mark.parametrize("overlay", render.EKS_OVERLAYS)
@pytest.mark.parametrize("name", sorted(policies.SERVICES))
def test_replicas_on_an_hpa_managed_deployment(fresh: Callable[[str], list[Obj]], overlay: str, name: str) -> None:
    objects = fresh(overlay)
    (dep,) = k8s_objects.find(objects, "Deployment", name)
    dep["spec"]["replicas"] = 3
    assert _violations("hpa-owns-replicas", overlay, objects) == [
        f"Deployment/{name}: sets replicas 3 but HorizontalPodAutoscaler/{name} owns the replica count; "
        "remove it (and any `replicas:` entry in the overlay)"
    ]


def test_an_overlay_replicas_entry_is_caught_after_rendering(tmp_path: Path) -> None:
    """A mistake seen in review: an overlay's `replicas:` list re-adds the field the HPA owns."""
    overlay = tmp_path / "with-replicas"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(render.OVERLAYS_DIR / "eks-prod", overlay)],
                "replicas": [{"name": "text-classifier", "count": 3}],
            }
        )
    )
    objects = render.render(overlay)
    assert _violations("hpa-owns-replicas", "eks-prod", objects) == [
        "Deployment/text-classifier: sets replicas 3 but HorizontalPodAutoscaler/text-classifier owns the replica "
        "count; remove it (and any `replicas:` entry in the overlay)"
    ]


def test_local_leaves_replicas_to_its_hpas(rendered: dict[str, list[Obj]]) -> None:
    """kind keeps the production HPAs (metrics-server runs there), so local sets no replicas either."""
    for overlay in render.LOCAL_OVERLAYS:
        for name in policies.SERVICES:
            (dep,) = k8s_objects.find(rendered[overlay], "Deployment", name)
            assert "replicas" not in dep["spec"]
            hpa = k8s_objects.hpa_for(rendered[overlay], name)
            assert hpa is not None
            assert hpa["spec"]["minReplicas"] == 1
        assert policies.check_hpa_owns_replicas(overlay, rendered[overlay]) == []


def _without_zone_checks(violations: list[str]) -> list[str]:
    return [v for v in violations if not v.startswith(("zone ", "without zone "))]


def test_gpu_hpa_beyond_the_gpu_node_group(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-prod")
    (hpa,) = k8s_objects.find(objects, "HorizontalPodAutoscaler", "image-classifier")
    hpa["spec"]["maxReplicas"] = 7
    assert _without_zone_checks(_violations("gpu-capacity", "eks-prod", objects)) == [
        "HorizontalPodAutoscaler/image-classifier: maxReplicas 7 > 6 GPUs in the GPU node groups"
    ]


def test_a_rollout_at_the_hpa_maximum_needs_a_gpu_for_its_surge(fresh: Callable[[str], list[Obj]]) -> None:
    """The issue's stall: maxReplicas equal to the GPU capacity with maxSurge 1 and maxUnavailable 0."""
    objects = fresh("eks-prod")
    (hpa,) = k8s_objects.find(objects, "HorizontalPodAutoscaler", "image-classifier")
    hpa["spec"]["maxReplicas"] = 6  # == gpu-t4 maxSize 2 x 3 zones x 1 GPU
    assert _without_zone_checks(_violations("gpu-capacity", "eks-prod", objects)) == [
        "a rollout at the HPA maximum needs 7 GPUs (maxReplicas + maxSurge) but the GPU node groups hold 6: "
        "raise the GPU node group maxSize, lower maxReplicas, or roll with maxSurge 0"
    ]
    # Rolling with maxSurge 0 (one pod down at a time) always progresses at any size (the zone checks aside).
    (dep,) = k8s_objects.find(objects, "Deployment", "image-classifier")
    dep["spec"]["strategy"]["rollingUpdate"] = {"maxSurge": 0, "maxUnavailable": 1}
    assert _without_zone_checks(policies.check_gpu_capacity("eks-prod", objects)) == []


def test_the_gpu_capacity_is_checked_per_zone(
    fresh: Callable[[str], list[Obj]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a hard zone spread, every zone must hold its share of the peak, and two zones the HPA maximum."""
    objects = fresh("eks-prod")
    assert policies.check_gpu_capacity("eks-prod", objects) == []
    assert policies.gpu_zone_capacity() == {"us-east-1a": 2, "us-east-1b": 2, "us-east-1c": 2}
    assert policies.most_in_one_zone(5, 3, 1) == 2  # 4 pods + 1 surge over 3 zones: 2/2/1
    assert policies.most_in_one_zone(4, 2, 1) == 2
    # The HPA maximum at 5 still fits the 6 GPUs in all (no surge: maxSurge 0), but not two zones of 2.
    (hpa,) = k8s_objects.find(objects, "HorizontalPodAutoscaler", "image-classifier")
    hpa["spec"]["maxReplicas"] = 5
    (dep,) = k8s_objects.find(objects, "Deployment", "image-classifier")
    dep["spec"]["strategy"]["rollingUpdate"] = {"maxSurge": 0, "maxUnavailable": 1}
    assert policies.check_gpu_capacity("eks-prod", objects) == [
        f"without zone {lost} the other GPU zones hold 4 GPUs ({rest}); the HPA maximum 5 needs 3 in each"
        for lost, rest in (
            ("us-east-1a", "us-east-1b: 2, us-east-1c: 2"),
            ("us-east-1b", "us-east-1a: 2, us-east-1c: 2"),
            ("us-east-1c", "us-east-1a: 2, us-east-1b: 2"),
        )
    ]
    # One multi-zone group instead (the old nodegroups.yaml, maxSize 5) holds the totals, but the autoscaler
    # cannot choose a zone for it: a pod pending for zone b may get its new node in zone a.
    gpu = nodegroups.load_nodegroups()["gpu-t4"]
    single = dataclasses.replace(gpu, per_zone=False, max_size=5)
    monkeypatch.setattr(policies, "load_nodegroups", lambda: {**nodegroups.load_nodegroups(), "gpu-t4": single})
    assert policies.gpu_capacity() == 5
    assert policies.check_gpu_capacity("eks-prod", fresh("eks-prod")) == [
        "node group gpu-t4 spans 3 zones: a hard zone spread needs one GPU node group per zone "
        "(nodegroups.yaml perZone), or a pod pending for one zone may get its node in another"
    ]


@pytest.mark.parametrize(
    ("rolling", "replicas", "expected"),
    [
        ({"maxSurge": 1, "maxUnavailable": 0}, 4, (1, 0)),
        ({"maxSurge": "25%", "maxUnavailable": "25%"}, 3, (1, 0)),  # surge rounds up, unavailable down
        ({}, 12, (3, 3)),  # the API defaults
        ({"maxSurge": 0, "maxUnavailable": 0}, 4, (0, 1)),
    ],
)
def test_rollout_bounds_resolve_like_the_controller(rolling: Obj, replicas: int, expected: tuple[int, int]) -> None:
    dep = {"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": rolling}}}
    assert policies.rollout_bounds(dep, replicas) == expected


@pytest.mark.parametrize("grace", [25, 20])
def test_grace_period_shorter_than_prestop_plus_drain(fresh: Callable[[str], list[Obj]], grace: int) -> None:
    objects = fresh("eks-prod")
    _pod(objects, "Deployment", "image-classifier")["terminationGracePeriodSeconds"] = grace
    assert _violations("termination", "eks-prod", objects) == [
        f"Deployment/image-classifier: terminationGracePeriodSeconds {grace} must exceed preStop 5 s + drain 20 s"
    ]


def test_drain_timeout_is_read_from_the_configmap(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("local")
    (cm,) = [
        o for o in k8s_objects.find(objects, "ConfigMap") if o["metadata"]["name"].startswith("text-classifier-config")
    ]
    cm["data"]["TEXT_CLASSIFIER_DRAIN_TIMEOUT_S"] = "60"
    assert any("drain 60 s" in v for v in _violations("termination", "local", objects))


def test_exec_prestop_sleep_is_understood(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("local")
    c = _container(objects, "Deployment", "text-classifier")
    c["lifecycle"]["preStop"] = {"exec": {"command": ["/bin/sh", "-c", "sleep 30"]}}
    assert any("preStop 30 s" in v for v in _violations("termination", "local", objects))


def test_missing_prestop(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("local")
    del _container(objects, "Deployment", "text-classifier")["lifecycle"]
    _violations("termination", "local", objects)


def test_zone_spread_that_blocks_scheduling(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-prod")
    for t in _pod(objects, "Deployment", "text-classifier")["topologySpreadConstraints"]:
        t["whenUnsatisfiable"] = "DoNotSchedule"
    _violations("service-shape", "eks-prod", objects)


def test_local_without_an_hpa(fresh: Callable[[str], list[Obj]]) -> None:
    objects = [o for o in fresh("local") if o["kind"] != "HorizontalPodAutoscaler"]
    assert "Deployment/text-classifier: local scales it with an HPA too (metrics-server runs in kind)" in _violations(
        "service-shape", "local", objects
    )


def test_local_with_a_pdb(fresh: Callable[[str], list[Obj]], rendered: dict[str, list[Obj]]) -> None:
    objects = [*fresh("local"), *k8s_objects.find(rendered["eks-prod"], "PodDisruptionBudget", "text-classifier")]
    assert "Deployment/text-classifier: local has no PDB (one node cannot honour it during a drain)" in _violations(
        "service-shape", "local", objects
    )


def test_hpa_that_scales_down_as_fast_as_up(fresh: Callable[[str], list[Obj]]) -> None:
    objects = fresh("eks-prod")
    (hpa,) = k8s_objects.find(objects, "HorizontalPodAutoscaler", "text-classifier")
    hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] = 0
    _violations("hpa-behavior", "eks-prod", objects)


# --- the rules of the production review, stated directly on the rendered YAML -----------------------------


@pytest.mark.parametrize("overlay", render.EKS_OVERLAYS)
def test_cpu_workloads_have_required_affinity_to_the_cpu_group(overlay: str, rendered: dict[str, list[Obj]]) -> None:
    cpu_group = next(g for g in nodegroups.load_nodegroups().values() if g.role == "cpu")
    cpu = {"key": "workload-class", "operator": "In", "values": ["cpu"]}
    for name in ("text-classifier", *policies.node_autoscalers(rendered[overlay])):
        spec = _pod(rendered[overlay], "Deployment", name)
        terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        if name == "karpenter":  # and never on a node it launched (it could consolidate it away)
            cpu_only = [cpu, {"key": "karpenter.sh/nodepool", "operator": "DoesNotExist"}]
            assert terms == [{"matchExpressions": cpu_only}]
        else:
            assert terms == [{"matchExpressions": [cpu]}]
        assert cpu_group.labels["workload-class"] == "cpu"


@pytest.mark.parametrize("overlay", ALL)
def test_only_the_gpu_workload_requests_gpus(overlay: str, rendered: dict[str, list[Obj]]) -> None:
    requesting = {
        k8s_objects.ref(obj)
        for obj, spec in k8s_objects.workloads(rendered[overlay])
        for c in k8s_objects.containers(spec)
        if "nvidia.com/gpu" in {**c["resources"].get("limits", {}), **c["resources"].get("requests", {})}
    }
    headroom = {"Deployment/gpu-headroom"} if overlay.endswith("+gpu-headroom") else set()
    assert requesting == (set() if overlay in render.LOCAL_OVERLAYS else {"Deployment/image-classifier", *headroom})


@pytest.mark.parametrize("overlay", ALL)
def test_grace_exceeds_prestop_plus_drain(overlay: str, rendered: dict[str, list[Obj]]) -> None:
    for name, prefix in policies.SERVICES.items():
        (dep,) = k8s_objects.find(rendered[overlay], "Deployment", name)
        spec = dep["spec"]["template"]["spec"]
        c = spec["containers"][0]
        drain = float(k8s_objects.container_env(rendered[overlay], spec, c)[prefix + "DRAIN_TIMEOUT_S"])
        assert spec["terminationGracePeriodSeconds"] > c["lifecycle"]["preStop"]["sleep"]["seconds"] + drain
