"""Where a pod can be scheduled: the scheduler's node predicates, evaluated statically against the node groups.

The one placement: the policies, the README diagram and the capacity planner all ask this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ops.k8s.nodegroups import NodeGroup, load_nodegroups
from ops.k8s.objects import Obj, containers, expression_matches, parse_quantity, ref, workloads


def tolerates(tolerations: list[Obj], taint: Mapping[str, str]) -> bool:
    """Whether any toleration tolerates `taint` (the scheduler's matching rules)."""
    for tol in tolerations:
        if tol.get("effect") and tol["effect"] != taint["effect"]:
            continue
        operator = tol.get("operator", "Equal")
        if not tol.get("key"):
            if operator == "Exists":
                return True
            continue
        if tol["key"] != taint["key"]:
            continue
        if operator == "Exists" or str(tol.get("value", "")) == str(taint.get("value", "")):
            return True
    return False


def pod_requests(spec: Obj) -> dict[str, float]:
    """What one pod asks the scheduler for, summed over its containers: requests, with limits standing in where a
    resource has no request (Kubernetes defaults the request to the limit; GPUs are set as limits only)."""
    total: dict[str, float] = {}
    for c in spec.get("containers", []):
        resources = c.get("resources") or {}
        merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        for resource, amount in merged.items():
            total[resource] = total.get(resource, 0.0) + parse_quantity(amount)
    return total


def fits_nodegroup(spec: Obj, group: NodeGroup) -> bool:
    """Whether a pod with this spec can be scheduled on a node of `group`: nodeSelector, required node affinity
    (terms ORed, expressions ANDed), NoSchedule/NoExecute taints, and extended resources (e.g. nvidia.com/gpu)."""
    labels = group.labels
    if any(labels.get(k) != str(v) for k, v in (spec.get("nodeSelector") or {}).items()):
        return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms") or []
    if terms and not any(
        all(expression_matches(e, labels) for e in term.get("matchExpressions") or []) for term in terms
    ):
        return False
    for taint in group.taints:
        if taint["effect"] in ("NoSchedule", "NoExecute") and not tolerates(spec.get("tolerations") or [], taint):
            return False
    for c in containers(spec):
        for resource, amount in ((c.get("resources") or {}).get("limits") or {}).items():
            if "/" in resource and parse_quantity(amount) > group.allocatable_amount(resource):
                return False
    return True


def fitting_groups(spec: Obj, groups: Iterable[NodeGroup] | None = None) -> list[NodeGroup]:
    """The node groups a pod with this spec can be scheduled on, in nodegroups.yaml order."""
    groups = load_nodegroups().values() if groups is None else groups
    return [g for g in groups if fits_nodegroup(spec, g)]


def placement(objects: list[Obj], groups: Iterable[NodeGroup] | None = None) -> dict[str, list[str]]:
    """kind/name of every workload -> names of the node groups its pods can be scheduled on."""
    groups = list(load_nodegroups().values() if groups is None else groups)
    return {ref(obj): [g.name for g in fitting_groups(spec, groups)] for obj, spec in workloads(objects)}
