"""Capacity plan from a vegeta step run: replicas, nodes per node group, matching HPA target; report and plot."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ops.core import REPO_ROOT
from ops.load import StepRun

NODEGROUPS_PATH = REPO_ROOT / "manifests" / "nodegroups.yaml"
PROD_OVERLAY = "eks-prod"
GPU_RESOURCE = "nvidia.com/gpu"

# Used only when the eks-prod overlay cannot be rendered; the report says so. Keep in step with manifests/base.
FALLBACK_REQUESTS: dict[str, dict[str, str]] = {
    "image-classifier": {"cpu": "2", "memory": "6Gi", GPU_RESOURCE: "1"},
    "text-classifier": {"cpu": "1", "memory": "2Gi"},
}

_MEMORY_UNITS = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
}


def parse_quantity(value: str | float) -> float:
    """A Kubernetes quantity as a float: "3920m" -> 3.92, "14Gi" -> 15032385536, "1" -> 1."""
    text = str(value).strip()
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", text)
    if not match:
        raise ValueError(f"not a quantity: {value!r}")
    number, unit = float(match.group(1)), match.group(2)
    if unit == "":
        return number
    if unit == "m":
        return number / 1000
    if unit in _MEMORY_UNITS:
        return number * _MEMORY_UNITS[unit]
    raise ValueError(f"unknown unit in quantity {value!r}")


@dataclass
class NodeGroup:
    """One EKS managed node group from manifests/nodegroups.yaml."""

    name: str
    instance_type: str
    min_size: int
    max_size: int
    allocatable: dict[str, float]
    labels: dict[str, str]
    taints: list[dict[str, str]]


def load_nodegroups(path: Path = NODEGROUPS_PATH) -> list[NodeGroup]:
    """Read the node-group definitions the simulated cluster uses."""
    data = yaml.safe_load(path.read_text())
    return [
        NodeGroup(
            name=g["name"],
            instance_type=g["instanceType"],
            min_size=int(g["minSize"]),
            max_size=int(g["maxSize"]),
            allocatable={k: parse_quantity(v) for k, v in g["allocatable"].items()},
            labels=dict(g.get("labels") or {}),
            taints=list(g.get("taints") or []),
        )
        for g in data["nodeGroups"]
    ]


@dataclass
class PodSpec:
    """What one pod of a service asks the scheduler for, and where it came from."""

    service: str
    requests: dict[str, float]
    node_selector: dict[str, list[str]]  # label -> allowed values (nodeSelector and required nodeAffinity "In")
    source: str


def _container_requests(pod_spec: dict[str, Any]) -> dict[str, float]:
    total: dict[str, float] = {}
    for container in pod_spec.get("containers") or []:
        resources = container.get("resources") or {}
        merged = dict(resources.get("limits") or {})
        merged.update(resources.get("requests") or {})  # requests win; limits stand in (e.g. GPUs set only as limits)
        for key, value in merged.items():
            if key in ("cpu", "memory", GPU_RESOURCE):
                total[key] = total.get(key, 0.0) + parse_quantity(value)
    return total


def _node_constraints(pod_spec: dict[str, Any]) -> dict[str, list[str]]:
    constraints = {k: [str(v)] for k, v in (pod_spec.get("nodeSelector") or {}).items()}
    required = ((pod_spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms") or []
    # Terms are ORed; the first one is what the planner places by (the overlays write exactly one).
    for expression in (terms[0].get("matchExpressions") or []) if terms else []:
        if expression.get("operator") == "In":
            constraints[expression["key"]] = [str(v) for v in expression.get("values") or []]
    return constraints


def pod_spec_from_documents(documents: list[dict[str, Any]], service: str, source: str) -> PodSpec | None:
    """Find the Deployment of `service` in rendered manifests and read its pod requests and nodeSelector."""
    for doc in documents:
        if not isinstance(doc, dict) or doc.get("kind") not in (
            "Deployment",
            "StatefulSet",
        ):
            continue
        meta = doc.get("metadata") or {}
        labels = meta.get("labels") or {}
        if service not in (meta.get("name"), labels.get("app.kubernetes.io/name")):
            continue
        pod = ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
        return PodSpec(service, _container_requests(pod), _node_constraints(pod), source)
    return None


def _render_overlay(overlay: str) -> list[dict[str, Any]] | None:
    try:
        from ops.manifests import render
    except ImportError:
        return None
    rendered = render(overlay)
    if isinstance(rendered, str | bytes):
        return [d for d in yaml.safe_load_all(rendered) if d]
    return [d for d in rendered if d]


def pod_spec(service: str, overlay: str = PROD_OVERLAY) -> PodSpec:
    """Pod requests of `service` from the rendered overlay; clearly marked fallback values when it cannot render."""
    reason = "ops.manifests.render is not available"
    try:
        documents = _render_overlay(overlay)
    except Exception as error:  # any render failure means: use the fallback, and say why
        documents, reason = None, f"rendering {overlay} failed: {error}"
    if documents is not None:
        found = pod_spec_from_documents(documents, service, f"rendered overlay {overlay}")
        if found is not None and found.requests:
            return found
        reason = f"no Deployment {service!r} with resource requests in overlay {overlay}"
    if service not in FALLBACK_REQUESTS:
        raise KeyError(f"no pod requests known for {service!r} ({reason})")
    requests = {k: parse_quantity(v) for k, v in FALLBACK_REQUESTS[service].items()}
    selector = {"workload-class": ["gpu" if GPU_RESOURCE in requests else "cpu"]}
    return PodSpec(service, requests, selector, f"FALLBACK defaults in ops/capacity.py ({reason})")


def choose_nodegroup(spec: PodSpec, groups: list[NodeGroup]) -> NodeGroup:
    """The node group whose labels match the pod's nodeSelector (GPU pods: a group with GPUs)."""
    wants_gpu = spec.requests.get(GPU_RESOURCE, 0) > 0
    for group in groups:
        has_gpu = group.allocatable.get(GPU_RESOURCE, 0) > 0
        if wants_gpu != has_gpu:
            continue
        if all(group.labels.get(k) in allowed for k, allowed in spec.node_selector.items()):
            return group
    raise LookupError(f"no node group fits {spec.service} (selector {spec.node_selector}, gpu={wants_gpu})")


def pods_per_node(spec: PodSpec, group: NodeGroup) -> int:
    """How many pods of `spec` fit on one node of `group`, by every resource the pod requests."""
    fits = [int(group.allocatable.get("pods", 110))]
    for resource, amount in spec.requests.items():
        if amount > 0:
            fits.append(int(group.allocatable.get(resource, 0) // amount))
    return max(0, min(fits))


def _duration_s(text: str) -> float:
    total = 0.0
    for number, unit in re.findall(r"([0-9.]+)(ms|s|m|h)", text):
        total += float(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


@dataclass
class CapacityPlan:
    """The plan and every number it came from."""

    service: str
    target_rps: float
    slo_p99_ms: float
    headroom: float
    sustainable_rps_per_pod: float
    planned_rps_per_pod: float
    replicas: int
    replicas_by_load: int
    min_replicas: int
    nodegroup: str
    instance_type: str
    pods_per_node: int
    nodes: int
    nodes_within_max: bool
    hpa: dict[str, Any]
    pod_requests: dict[str, float]
    pod_requests_source: str
    steps_file: str
    measured_on: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def plan_capacity(
    run: StepRun,
    *,
    service: str,
    target_rps: float,
    slo_p99_ms: float,
    headroom: float = 0.3,
    min_replicas: int = 2,
    spec: PodSpec | None = None,
    groups: list[NodeGroup] | None = None,
    steps_file: str = "",
) -> CapacityPlan:
    """Replicas, nodes and HPA target for `target_rps` at `slo_p99_ms`, keeping `headroom` spare per pod."""
    if not 0 <= headroom < 1:
        raise ValueError("headroom must be in [0, 1)")
    judged = StepRun(**{**run.__dict__, "slo_p99_ms": slo_p99_ms})
    best = judged.sustainable()
    notes: list[str] = []
    spec = spec or pod_spec(service)
    groups = groups or load_nodegroups()
    group = choose_nodegroup(spec, groups)
    fit = pods_per_node(spec, group)
    if best is None:
        notes.append(f"no step met p99 <= {slo_p99_ms} ms with success >= {run.min_success}: start lower")
        per_pod = 0.0
    else:
        per_pod = best.rate
        if best is judged.steps[-1]:
            notes.append(
                "the last step still met the SLO: the pod may sustain more; raise --max-rate for a tighter plan"
            )
    planned = per_pod * (1 - headroom)
    by_load = math.ceil(target_rps / planned) if planned > 0 else 0
    replicas = max(by_load, min_replicas)
    nodes = max(group.min_size, math.ceil(replicas / fit)) if fit > 0 else 0
    if fit == 0:
        notes.append(f"a pod does not fit on one {group.instance_type} node at all")
    if nodes > group.max_size:
        notes.append(f"needs {nodes} nodes but node group {group.name} has maxSize {group.max_size}")
    hpa: dict[str, Any] = {
        "minReplicas": min_replicas,
        "maxReplicas": max(replicas, math.ceil(replicas * 1.5)),
        "rps_per_pod_target": round(planned, 2),
    }
    cpu_request = spec.requests.get("cpu", 0.0)
    if best is not None and best.service_cpu_seconds and cpu_request > 0:
        cores_at_best = best.service_cpu_seconds / max(_duration_s(best.duration), 1e-9)
        utilization = 100 * cores_at_best * (1 - headroom) / cpu_request
        hpa["cpu_cores_at_sustainable_rate"] = round(cores_at_best, 3)
        hpa["cpu_target_utilization_percent"] = int(min(95, max(10, round(utilization))))
        if utilization > 95 or utilization < 10:
            notes.append(f"raw CPU utilization target {utilization:.0f}% clamped to 10..95%")
    else:
        hpa["cpu_target_utilization_percent"] = None
        notes.append("no service CPU measurement in the step run: scale on rps_per_pod_target instead")
    if spec.requests.get(GPU_RESOURCE, 0) > 0:
        notes.append("GPU pods: scale on rps_per_pod_target (or queue depth) via a custom metric; CPU % is secondary")
    notes.append(f"pod requests from: {spec.source}")
    return CapacityPlan(
        service=service,
        target_rps=target_rps,
        slo_p99_ms=slo_p99_ms,
        headroom=headroom,
        sustainable_rps_per_pod=per_pod,
        planned_rps_per_pod=round(planned, 3),
        replicas=replicas,
        replicas_by_load=by_load,
        min_replicas=min_replicas,
        nodegroup=group.name,
        instance_type=group.instance_type,
        pods_per_node=fit,
        nodes=nodes,
        nodes_within_max=nodes <= group.max_size,
        hpa=hpa,
        pod_requests=spec.requests,
        pod_requests_source=spec.source,
        steps_file=steps_file,
        measured_on=str(run.meta.get("machine", "unknown machine")),
        notes=notes,
    )


def plot_steps(run: StepRun, path: Path, *, slo_p99_ms: float, title: str = "") -> Path:
    """PNG of latency percentiles (and success ratio) against offered rate, with the SLO line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [s.rate for s in run.steps]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for key in ("p50", "p90", "p95", "p99"):
        ax.plot(rates, [s.latency_ms[key] for s in run.steps], marker="o", label=key)
    ax.axhline(slo_p99_ms, color="red", linestyle="--", label=f"SLO p99 {slo_p99_ms:g} ms")
    ax.set_xlabel("offered rate (requests/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    success = ax.twinx()
    success.plot(
        rates,
        [s.success * 100 for s in run.steps],
        color="grey",
        linestyle=":",
        marker="x",
        label="success %",
    )
    success.set_ylabel("success (%)")
    success.set_ylim(0, 105)
    handles, labels = ax.get_legend_handles_labels()
    more_handles, more_labels = success.get_legend_handles_labels()
    ax.legend(handles + more_handles, labels + more_labels, loc="upper left", fontsize="small")
    ax.set_title(title or "latency percentiles vs rate")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def format_requests(requests: dict[str, float]) -> str:
    """cpu=2, memory=6Gi, nvidia.com/gpu=1."""
    return ", ".join(f"{k}={v / 2**30:g}Gi" if k == "memory" else f"{k}={v:g}" for k, v in requests.items())


def render_markdown(plan: CapacityPlan, run: StepRun, plot_name: str) -> str:
    """The capacity report."""
    lines = [
        f"# Capacity plan: {plan.service}",
        "",
        f"Target **{plan.target_rps:g} rps** at **p99 <= {plan.slo_p99_ms:g} ms**, headroom {plan.headroom:.0%}.",
        f"Step run: `{plan.steps_file}`",
        f"(measured on {plan.measured_on}, {len(run.steps)} steps of {run.step_duration}).",
        "",
        "| | |",
        "|---|---|",
        f"| sustainable rate per pod | {plan.sustainable_rps_per_pod:g} rps |",
        f"| planned rate per pod (after headroom) | {plan.planned_rps_per_pod:g} rps |",
        f"| replicas | **{plan.replicas}** (by load {plan.replicas_by_load}, minimum {plan.min_replicas}) |",
        f"| node group | {plan.nodegroup} ({plan.instance_type}), {plan.pods_per_node} pods/node |",
        f"| nodes | **{plan.nodes}**{'' if plan.nodes_within_max else ' (over maxSize!)'} |",
        f"| HPA rps/pod target | {plan.hpa['rps_per_pod_target']} |",
        f"| HPA CPU target utilization | {plan.hpa.get('cpu_target_utilization_percent') or 'n/a'} % |",
        f"| pod requests | {format_requests(plan.pod_requests)} ({plan.pod_requests_source}) |",
        "",
        "## Steps",
        "",
        "| rate | throughput | success | p50 ms | p90 ms | p95 ms | p99 ms | max ms | within SLO |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for s in run.steps:
        ok = s.latency_ms["p99"] <= plan.slo_p99_ms and s.success >= run.min_success
        lat = s.latency_ms
        lines.append(
            f"| {s.rate:g} | {s.throughput:g} | {s.success:.2%} | {lat['p50']:g} | {lat['p90']:g} | {lat['p95']:g} "
            f"| {lat['p99']:g} | {lat['max']:g} | {'yes' if ok else 'no'} |"
        )
    lines += ["", f"![latency vs rate]({plot_name})", "", "## Notes", ""]
    lines += [f"- {note}" for note in plan.notes]
    lines += [
        (
            "- The per-pod rate was measured where the step run ran; re-run the step on the target instance type "
            "(or scale by the benchmark ratio between machines) before sizing production."
        ),
        "",
    ]
    return "\n".join(lines)


def write_report(plan: CapacityPlan, run: StepRun, folder: Path) -> dict[str, Path]:
    """Write plan.json, capacity.md and latency-vs-rate.png into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    png = plot_steps(
        run,
        folder / "latency-vs-rate.png",
        slo_p99_ms=plan.slo_p99_ms,
        title=f"{plan.service}: latency vs rate",
    )
    (folder / "plan.json").write_text(json.dumps(plan.to_dict(), indent=2))
    (folder / "capacity.md").write_text(render_markdown(plan, run, png.name))
    return {"plan": folder / "plan.json", "report": folder / "capacity.md", "plot": png}
