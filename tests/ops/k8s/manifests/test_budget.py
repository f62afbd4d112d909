"""The GPU provisioning budget: stated once in three places of the manifests, derived into everything that waits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml

from ops.k8s import budget, deploy, policies, render
from ops.k8s import objects as k8s_objects

Obj = dict[str, Any]


def _gpu(objects: list[Obj]) -> Obj:
    (dep,) = k8s_objects.find(objects, "Deployment", budget.GPU_SERVICE)
    return dep


def _autoscaler_flags(objects: list[Obj]) -> list[str]:
    (ca,) = k8s_objects.find(objects, "Deployment", "cluster-autoscaler")
    return list(ca["spec"]["template"]["spec"]["containers"][0]["command"])


@pytest.mark.parametrize("overlay", ["eks-prod", "eks-staging"])
def test_the_budget_is_the_sum_of_its_three_stated_parts(overlay: str, rendered: dict[str, list[Obj]]) -> None:
    objects = rendered[overlay]
    found = budget.gpu_provisioning_budget(objects)
    assert found is not None
    if overlay == "eks-prod":
        assert "--max-node-provision-time=15m" in _autoscaler_flags(objects)
    else:  # Karpenter (eks-staging): its registration timeout, which no flag changes
        assert k8s_objects.find(objects, "Deployment", budget.KARPENTER)
        assert budget.KARPENTER_REGISTRATION_TIMEOUT == "15m"
    assert found.node_provision_s == 15 * 60
    assert _gpu(objects)["metadata"]["annotations"][budget.IMAGE_PULL_ANNOTATION] == "5m"
    assert found.image_pull_s == 5 * 60
    probe = _gpu(objects)["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    assert found.model_load_s == probe["periodSeconds"] * probe["failureThreshold"] == 300
    assert found.total_s == found.progress_deadline_s == 1500
    # Rendered: the Deployment's deadline is the budget, not Kubernetes' 600 s default nor the old 300 s wait.
    assert _gpu(objects)["spec"]["progressDeadlineSeconds"] == 1500
    # invoke deploy: one node provisioning + per surge step (maxReplicas / maxSurge) pull + load + grace.
    steps = int(k8s_objects.hpa_for(objects, budget.GPU_SERVICE)["spec"]["maxReplicas"])  # type: ignore[index]
    assert found.rollout_steps == steps
    assert found.rollout_wait_s == 900 + steps * (300 + 300 + 40)


def test_deploy_waits_the_budget_for_the_gpu_service_only() -> None:
    waits = {w.name: s for w, s in deploy.rollout_waits(deploy.render("prod")).items()}
    assert waits["image-classifier"] == budget.gpu_provisioning_budget(render.render("eks-prod")).rollout_wait_s  # type: ignore[union-attr]
    assert waits["image-classifier"] > 600 > deploy.ROLLOUT_TIMEOUT_S
    assert {s for name, s in waits.items() if name != "image-classifier"} == {deploy.ROLLOUT_TIMEOUT_S}
    # An explicit --timeout still applies to everything.
    assert set(deploy.rollout_waits(deploy.render("prod"), timeout_s=42).values()) == {42}
    # No GPU service, no budget: kind's overlay waits 300 s everywhere.
    assert set(deploy.rollout_waits(deploy.render("local")).values()) == {deploy.ROLLOUT_TIMEOUT_S}


def test_one_change_moves_every_derived_wait(rendered: dict[str, list[Obj]]) -> None:
    """The autoscaler's flag is the only place node provisioning is written: change it and everything follows."""
    objects = yaml.safe_load(yaml.safe_dump(rendered["eks-prod"]))
    (ca,) = k8s_objects.find(objects, "Deployment", "cluster-autoscaler")
    command = ca["spec"]["template"]["spec"]["containers"][0]["command"]
    command[command.index("--max-node-provision-time=15m")] = "--max-node-provision-time=20m"
    assert budget.with_progress_deadline(objects)
    assert _gpu(objects)["spec"]["progressDeadlineSeconds"] == 1800
    found = budget.gpu_provisioning_budget(objects)
    assert found is not None
    assert found.rollout_wait_s == 1200 + 4 * 640
    assert "| node provisioning | 1200 |" in budget.markdown(objects)


def test_scaling_shrinks_every_part_alike() -> None:
    scaled = [d for d in yaml.safe_load_all(render.render_text("eks-prod", budget_scale=1 / 25)) if d]
    assert _gpu(scaled)["spec"]["progressDeadlineSeconds"] == 60
    found = budget.gpu_provisioning_budget(scaled, 1 / 25)
    assert found is not None
    assert (found.node_provision_s, found.image_pull_s, found.model_load_s) == pytest.approx((36, 12, 12))


def test_go_durations() -> None:
    assert budget.go_duration_s("15m") == 900
    assert budget.go_duration_s("1h30m") == 5400
    assert budget.go_duration_s("90s") == 90
    for bad in ("", "15", "m15", "15 m", "1d"):
        with pytest.raises(budget.BudgetError):
            budget.go_duration_s(bad)


@pytest.mark.parametrize(
    ("plant", "expected"),
    [
        ("deadline", "progressDeadlineSeconds 600 < the GPU provisioning budget 1500 s"),
        ("annotation", f"no {budget.IMAGE_PULL_ANNOTATION} annotation"),
        ("probe", "no startupProbe, so no model-load allowance"),
        ("flag", "Deployment/cluster-autoscaler: state --max-node-provision-time"),
    ],
)
def test_the_budget_policy_catches_each_missing_part(
    fresh: Callable[[str], list[Obj]], plant: str, expected: str
) -> None:
    objects = fresh("eks-prod")
    assert policies.check_gpu_provisioning_budget("eks-prod", objects) == []
    dep = _gpu(objects)
    if plant == "deadline":
        dep["spec"]["progressDeadlineSeconds"] = 600  # Kubernetes' default: what a bare kubectl apply gets
    elif plant == "annotation":
        del dep["metadata"]["annotations"][budget.IMAGE_PULL_ANNOTATION]
    elif plant == "probe":
        del dep["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    else:
        (ca,) = k8s_objects.find(objects, "Deployment", "cluster-autoscaler")
        command = ca["spec"]["template"]["spec"]["containers"][0]["command"]
        command.remove("--max-node-provision-time=15m")
    found = policies.check_gpu_provisioning_budget("eks-prod", objects)
    assert len(found) == 1, found
    assert expected in found[0]
