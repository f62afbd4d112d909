"""The GPU provisioning budget: how long a new GPU pod may take to serve, from its three parts in the manifests.

A GPU pod that needs a new node waits for the Cluster Autoscaler to get one (at most its
`--max-node-provision-time`, after which it gives up on that node), then for the image pull, then for the
model to load (the container's startup probe window). Each part is stated once, where it is enforced:

| part | stated in |
|---|---|
| node provisioning | cluster-autoscaler `--max-node-provision-time`; Karpenter: its fixed registration timeout |
| image pull | the GPU Deployment's `eks-inference.io/image-pull-allowance` annotation (components/gpu) |
| model load | the GPU container's startupProbe (initialDelaySeconds + periodSeconds x failureThreshold) |

Everything that waits for a GPU rollout derives from their sum, here: the GPU Deployment's
`progressDeadlineSeconds` (set when the overlay is rendered, `ops.k8s.render`), `invoke deploy`'s rollout wait
and the table in docs/manifests.md. `scale` shrinks every part alike, for tests on the simulated cluster.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ops import core
from ops.k8s.objects import GPU_RESOURCE, Obj, containers, find, parse_quantity

IMAGE_PULL_ANNOTATION = "eks-inference.io/image-pull-allowance"
PROVISION_TIME_FLAG = "--max-node-provision-time"
# The Cluster Autoscaler's own default for the flag (FAQ: "What are the parameters to CA?").
DEFAULT_PROVISION_TIME = "15m"
AUTOSCALER = "cluster-autoscaler"
# Karpenter gives up on a NodeClaim whose node has not registered after 15 minutes (registrationTimeout in
# sigs.k8s.io/karpenter pkg/controllers/nodeclaim/lifecycle/liveness.go; not configurable), then launches another.
KARPENTER = "karpenter"
KARPENTER_REGISTRATION_TIMEOUT = "15m"
# The service whose rollouts wait for GPU nodes (ops.core's registry); other GPU pods (the optional
# headroom placeholder) have no rollout to wait for.
GPU_SERVICE = next(s.name for s in core.SERVICES.values() if s.gpu)
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|m|s|ms)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


class BudgetError(ValueError):
    """A part of the budget is missing or unreadable in the rendered objects."""


def go_duration_s(text: str) -> float:
    """Seconds of a Go duration as flags take them ("15m", "1h30m", "90s")."""
    parts = _GO_DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise BudgetError(f"{text!r} is not a Go duration")
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def _pod_gpus(dep: Obj) -> int:
    limits = (c.get("resources", {}).get("limits", {}) for c in containers(dep["spec"]["template"]["spec"]))
    return sum(int(parse_quantity(lim.get(GPU_RESOURCE, 0))) for lim in limits)


def gpu_deployments(objects: list[Obj]) -> list[Obj]:
    """The GPU service's Deployment, where its pods request a GPU (EKS overlays; none on kind)."""
    return [d for d in find(objects, "Deployment", GPU_SERVICE) if _pod_gpus(d) > 0]


@dataclass(frozen=True)
class GpuProvisioningBudget:
    """Seconds a GPU pod may take from Pending to Ready on a node that does not exist yet, and its parts."""

    node_provision_s: float
    image_pull_s: float
    model_load_s: float
    # Old pod's terminationGracePeriodSeconds: a rollout's next surge pod waits for that GPU to free up.
    termination_grace_s: float
    # Surge steps of a rollout at the HPA maximum (maxReplicas / maxSurge, rounded up).
    rollout_steps: int

    @property
    def total_s(self) -> float:
        """Node provisioning + image pull + model load."""
        return self.node_provision_s + self.image_pull_s + self.model_load_s

    @property
    def progress_deadline_s(self) -> int:
        """The Deployment's progressDeadlineSeconds: one surge pod's whole wait (the controller restarts the
        clock each time a new pod turns available)."""
        return math.ceil(self.total_s)

    @property
    def rollout_wait_s(self) -> int:
        """How long `invoke deploy` waits for the whole rollout at the HPA maximum: one node provisioning, then per
        surge step an image pull, a model load and an old pod's grace period (later steps reuse freed nodes).
        A rollout that really stalls is reported sooner: `kubectl rollout status` stops at the Deployment's
        ProgressDeadlineExceeded condition."""
        per_step = self.image_pull_s + self.model_load_s + self.termination_grace_s
        return math.ceil(self.node_provision_s + self.rollout_steps * per_step)


def _autoscaler_provision_time(objects: list[Obj]) -> str:
    for dep in find(objects, "Deployment", AUTOSCALER):
        for c in containers(dep["spec"]["template"]["spec"]):
            for arg in [*c.get("command", []), *c.get("args", [])]:
                if arg.startswith(PROVISION_TIME_FLAG + "="):
                    return str(arg.split("=", 1)[1])
    if find(objects, "Deployment", KARPENTER):
        return KARPENTER_REGISTRATION_TIMEOUT
    return DEFAULT_PROVISION_TIME


def _startup_window_s(dep: Obj) -> float:
    spec = dep["spec"]["template"]["spec"]
    probes = [c["startupProbe"] for c in spec["containers"] if "startupProbe" in c]
    if not probes:
        raise BudgetError(f"Deployment/{dep['metadata']['name']}: no startupProbe, so no model-load allowance")
    p = probes[0]
    return float(p.get("initialDelaySeconds", 0)) + float(p.get("periodSeconds", 10)) * float(
        p.get("failureThreshold", 3)
    )


def _rollout_steps(objects: list[Obj], dep: Obj) -> int:
    hpas = [
        h
        for h in find(objects, "HorizontalPodAutoscaler")
        if h["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
        and h["metadata"].get("namespace") == dep["metadata"].get("namespace")
    ]
    most = int(hpas[0]["spec"]["maxReplicas"]) if hpas else int(dep["spec"].get("replicas", 1))
    surge = str(dep["spec"].get("strategy", {}).get("rollingUpdate", {}).get("maxSurge", "25%"))
    per_step = math.ceil(most * float(surge[:-1]) / 100) if surge.endswith("%") else int(surge)
    return max(1, math.ceil(most / max(per_step, 1)))


def gpu_provisioning_budget(objects: list[Obj], scale: float = 1.0) -> GpuProvisioningBudget | None:
    """The budget of the rendered overlay's GPU Deployment (None when it has none), every part times `scale`."""
    deps = gpu_deployments(objects)
    if not deps:
        return None
    dep = deps[0]
    allowance = dep["metadata"].get("annotations", {}).get(IMAGE_PULL_ANNOTATION)
    if allowance is None:
        raise BudgetError(f"Deployment/{dep['metadata']['name']}: no {IMAGE_PULL_ANNOTATION} annotation")
    grace = float(dep["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30))
    return GpuProvisioningBudget(
        node_provision_s=go_duration_s(_autoscaler_provision_time(objects)) * scale,
        image_pull_s=go_duration_s(str(allowance)) * scale,
        model_load_s=_startup_window_s(dep) * scale,
        termination_grace_s=grace * scale,
        rollout_steps=_rollout_steps(objects, dep),
    )


def with_progress_deadline(objects: list[Obj], scale: float = 1.0) -> bool:
    """Set the GPU Deployment's progressDeadlineSeconds from the budget, in place; whether there was one."""
    budget = gpu_provisioning_budget(objects, scale)
    if budget is None:
        return False
    for dep in gpu_deployments(objects):
        dep["spec"]["progressDeadlineSeconds"] = budget.progress_deadline_s
    return True


def markdown(objects: list[Obj]) -> str:
    """The budget as the table docs/manifests.md carries (a generated section)."""
    budget = gpu_provisioning_budget(objects)
    if budget is None:
        raise BudgetError("the overlay has no GPU Deployment")
    rows = [
        (
            "node provisioning",
            budget.node_provision_s,
            f"cluster-autoscaler `{PROVISION_TIME_FLAG}` (Karpenter: its fixed 15 min registration timeout)",
        ),
        ("image pull", budget.image_pull_s, f"`{IMAGE_PULL_ANNOTATION}` on the GPU Deployment"),
        ("model load", budget.model_load_s, "the GPU container's startupProbe window"),
        ("**budget**", budget.total_s, "their sum (`ops.k8s.budget`)"),
    ]
    lines = ["| part | seconds | stated in |", "|---|---|---|"]
    lines += [f"| {what} | {seconds:g} | {where} |" for what, seconds, where in rows]
    lines += [
        "",
        f"Derived: the GPU Deployment's `progressDeadlineSeconds` = {budget.progress_deadline_s} (set at render); "
        f"`invoke deploy` waits up to {budget.rollout_wait_s} s for its rollout (one node provisioning + "
        f"{budget.rollout_steps} surge steps of pull + load + {budget.termination_grace_s:g} s grace); CPU "
        "workloads keep the 300 s wait.",
    ]
    return "\n".join(lines) + "\n"
