"""Reading rendered Kubernetes objects: workloads, pod specs, containers, env, selectors and quantities."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

Obj = dict[str, Any]

WORKLOAD_KINDS = ("Deployment", "DaemonSet", "StatefulSet", "Job", "CronJob", "ReplicaSet")
GPU_RESOURCE = "nvidia.com/gpu"
# The overlay's node autoscaler's settings (kube-system; components/cluster-autoscaler or components/karpenter, never
# both): CLUSTER_NAME and AWS_REGION for either, INTERRUPTION_QUEUE for Karpenter. One name for both, so what reads
# the cluster name (components/gpu-queue-autoscaling, the policies) works with either autoscaler.
NODE_AUTOSCALER_SETTINGS = "node-autoscaler-settings"

_QUANTITY = re.compile(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)")
_SUFFIXES = {
    "": 1.0,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
    "Pi": 2.0**50,
    "Ei": 2.0**60,
}


def parse_quantity(value: str | float) -> float:
    """A Kubernetes quantity as a float (CPU in cores, memory in bytes): "3920m" -> 3.92, "14Gi" -> 15032385536.

    Strict: anything that is not a number with a known suffix raises ValueError.
    """
    text = str(value).strip()
    match = _QUANTITY.fullmatch(text)
    if not match or match.group(2) not in _SUFFIXES:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return float(match.group(1)) * _SUFFIXES[match.group(2)]


def ref(obj: Obj) -> str:
    """kind/name of an object, e.g. "Deployment/image-classifier"."""
    return f"{obj['kind']}/{obj['metadata']['name']}"


def find(objects: Iterable[Obj], kind: str, name: str | None = None) -> list[Obj]:
    """Objects of `kind` (and `name`, if given)."""
    return [o for o in objects if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name)]


def pod_spec(obj: Obj) -> Obj | None:
    """The pod spec inside a workload object, or None for other kinds."""
    spec: Obj | None = None
    if obj.get("kind") == "CronJob":
        spec = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    elif obj.get("kind") in WORKLOAD_KINDS:
        spec = obj["spec"]["template"]["spec"]
    return spec


def workloads(objects: Iterable[Obj]) -> Iterator[tuple[Obj, Obj]]:
    """(workload, pod spec) for every workload object."""
    for obj in objects:
        spec = pod_spec(obj)
        if spec is not None:
            yield obj, spec


def containers(spec: Obj) -> list[Obj]:
    """Init and regular containers of a pod spec."""
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def image_tag(image: str) -> str | None:
    """The tag of an image reference (None when untagged); a digest counts as its own tag."""
    if "@" in image:
        return image.split("@", 1)[1]
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def container_env(objects: list[Obj], spec: Obj, container: Obj) -> dict[str, str]:
    """A container's environment as the kubelet would build it from envFrom ConfigMaps and env values."""
    env: dict[str, str] = {}
    configmaps = {o["metadata"]["name"]: o for o in find(objects, "ConfigMap")}
    for source in container.get("envFrom", []):
        cm_ref = source.get("configMapRef")
        if cm_ref and cm_ref["name"] in configmaps:
            prefix = source.get("prefix", "")
            env.update({prefix + k: str(v) for k, v in configmaps[cm_ref["name"]].get("data", {}).items()})
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
    return env


def prestop_sleep_seconds(container: Obj) -> float:
    """Seconds the container's preStop hook sleeps (native sleep action or `sleep N` exec)."""
    hook = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = hook.get("exec", {}).get("command", [])
    text = " ".join(command)
    match = re.search(r"\bsleep\s+(\d+(?:\.\d+)?)", text)
    return float(match.group(1)) if match else 0.0


def hpa_for(objects: list[Obj], deployment: str) -> Obj | None:
    """The HPA that scales Deployment `deployment`, if any."""
    for hpa in find(objects, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        if target["kind"] == "Deployment" and target["name"] == deployment:
            return hpa
    return None


def selects(selector: Obj, labels: Mapping[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels + matchExpressions) matches `labels`."""
    if not selector:
        return False
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    return all(expression_matches(e, labels) for e in selector.get("matchExpressions", []))


def pdbs_for(objects: list[Obj], workload: Obj) -> list[Obj]:
    """PodDisruptionBudgets in the workload's namespace whose selector matches its pods."""
    labels = workload["spec"]["template"]["metadata"].get("labels", {})
    namespace = workload["metadata"].get("namespace")
    return [
        p
        for p in find(objects, "PodDisruptionBudget")
        if p["metadata"].get("namespace") == namespace and selects(p["spec"].get("selector", {}), labels)
    ]


def expression_matches(expr: Obj, labels: Mapping[str, str]) -> bool:
    """Whether one label-selector / node-selector requirement (In, NotIn, Exists, DoesNotExist, Gt, Lt) holds."""
    key, op, values = expr["key"], expr["operator"], expr.get("values", [])
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return key not in labels or labels[key] not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op in ("Gt", "Lt"):
        if key not in labels:
            return False
        value, bound = int(labels[key]), int(values[0])
        return value > bound if op == "Gt" else value < bound
    raise ValueError(f"unknown operator {op!r}")


def inventory(objects: Iterable[Obj]) -> list[str]:
    """kind/name (namespace) of every object, in render order."""
    return [
        f"{ref(o)}" + (f" ({o['metadata']['namespace']})" if o["metadata"].get("namespace") else "") for o in objects
    ]
