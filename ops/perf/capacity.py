"""Capacity plan from a vegeta step run: replicas, nodes per node group, matching HPA target; report and plot."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ops import core
from ops.core import console, is_dry, out
from ops.k8s import placement
from ops.k8s.nodegroups import NodeGroup
from ops.k8s.nodegroups import load_nodegroups as _load_nodegroups
from ops.k8s.objects import GPU_RESOURCE, Obj, parse_quantity
from ops.k8s.render import ENV_OVERLAYS, MANIFESTS_DIR, OVERLAYS_DIR, ManifestError, render
from ops.perf import load
from ops.perf.load import StepRun
from ops.perf.report import new_run_dir, results_dir

PROD_OVERLAY = ENV_OVERLAYS["prod"]
# The defaults of `invoke bench.capacity` (its SLO is the load test's, ops.perf.load.SLO_P99_MS): stated here only.
TARGET_RPS = 100.0
HEADROOM = 0.3
MIN_REPLICAS = 2
SERVICE = "image-classifier"
# Seconds per step of the step run `invoke bench.capacity --run-step` starts.
STEP_DURATION = "5s"
# Only what the planner counts; other resources (ephemeral-storage, ...) do not bound pods per node here.
PLANNED_RESOURCES = ("cpu", "memory", GPU_RESOURCE)


def load_nodegroups() -> list[NodeGroup]:
    """The node groups of manifests/nodegroups.yaml (ops.k8s.nodegroups), in file order."""
    return list(_load_nodegroups().values())


@dataclass
class PodSpec:
    """What one pod of a service asks the scheduler for, and where it came from.

    `pod` is the pod spec the placement reads (affinity, tolerations, limits). A hand-made PodSpec without one
    is placed by its requests and selector alone: it is given no taint to respect (it tolerates every taint).
    """

    service: str
    requests: dict[str, float]
    node_selector: dict[str, list[str]]  # label -> allowed values (nodeSelector and required nodeAffinity "In")
    source: str
    pod: Obj = field(default_factory=dict, repr=False)

    def scheduling_pod(self) -> Obj:
        """The pod spec the placement evaluates."""
        if self.pod:
            return self.pod
        limits = {k: v for k, v in self.requests.items() if "/" in k}
        expressions = [{"key": k, "operator": "In", "values": v} for k, v in self.node_selector.items()]
        return {
            "containers": [{"name": self.service, "resources": {"requests": dict(self.requests), "limits": limits}}],
            "tolerations": [{"operator": "Exists"}],
            **(
                {
                    "affinity": {
                        "nodeAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": {
                                "nodeSelectorTerms": [{"matchExpressions": expressions}]
                            }
                        }
                    }
                }
                if expressions
                else {}
            ),
        }


def _node_constraints(pod: Obj) -> dict[str, list[str]]:
    """For the report: nodeSelector and the `In` expressions of every required node-affinity term."""
    constraints = {k: [str(v)] for k, v in (pod.get("nodeSelector") or {}).items()}
    required = ((pod.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    for term in required.get("nodeSelectorTerms") or []:
        for expression in term.get("matchExpressions") or []:
            if expression.get("operator") == "In":
                constraints[expression["key"]] = [str(v) for v in expression.get("values") or []]
    return constraints


def _spec_from_pod(service: str, pod: Obj, source: str) -> PodSpec:
    requests = {k: v for k, v in placement.pod_requests(pod).items() if k in PLANNED_RESOURCES}
    return PodSpec(service, requests, _node_constraints(pod), source, pod)


def pod_spec_from_documents(documents: list[Obj], service: str, source: str) -> PodSpec | None:
    """Find the Deployment of `service` in rendered manifests and read its pod requests and node constraints."""
    for doc in documents:
        if not isinstance(doc, dict) or doc.get("kind") not in ("Deployment", "StatefulSet"):
            continue
        meta = doc.get("metadata") or {}
        labels = meta.get("labels") or {}
        if service not in (meta.get("name"), labels.get("app.kubernetes.io/name")):
            continue
        pod = ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
        return _spec_from_pod(service, pod, source)
    return None


def _merge_pod(pod: Obj, patch: Obj) -> Obj:
    """The pod-spec fields placement reads, patched the way a strategic merge patches them: containers merged by
    name (resources merged per kind), tolerations and affinity and nodeSelector replaced by the patch's."""
    merged = dict(pod)
    for key in ("affinity", "tolerations", "nodeSelector"):
        if key in patch:
            merged[key] = patch[key]
    by_name = {c["name"]: c for c in merged.get("containers") or []}
    for change in patch.get("containers") or []:
        base = by_name.get(change["name"])
        if base is None:
            continue
        resources = dict(base.get("resources") or {})
        for kind, amounts in (change.get("resources") or {}).items():
            resources[kind] = {**(resources.get(kind) or {}), **amounts}
        by_name[change["name"]] = {**base, "resources": resources}
    merged["containers"] = list(by_name.values())
    return merged


def base_pod_spec(service: str, overlay: str = PROD_OVERLAY) -> PodSpec:
    """The service's pod as manifests/base declares it, with the Deployment patches of the overlay's components.

    The fallback when Kustomize cannot run: read from the same files, so it cannot drift from them (a test holds
    it equal to the rendered overlay).
    """
    pod = yaml.safe_load((MANIFESTS_DIR / "base" / service / "deployment.yaml").read_text())["spec"]["template"]["spec"]
    kustomization = yaml.safe_load((OVERLAYS_DIR / overlay / "kustomization.yaml").read_text())
    for component in kustomization.get("components") or []:
        folder = (OVERLAYS_DIR / overlay / component).resolve()
        for patch in yaml.safe_load((folder / "kustomization.yaml").read_text()).get("patches") or []:
            target = patch.get("target") or {}
            doc = yaml.safe_load((folder / patch["path"]).read_text()) if "path" in patch else None
            # JSON 6902 patches (lists of operations) edit no resources: only strategic-merge ones matter here.
            if not isinstance(doc, dict) or doc.get("kind") != "Deployment":
                continue
            if (target.get("name") or doc["metadata"]["name"]) != service:
                continue
            pod = _merge_pod(pod, ((doc.get("spec") or {}).get("template") or {}).get("spec") or {})
    where = f"manifests/base/{service} + the Deployment patches of {overlay}'s components"
    return _spec_from_pod(service, pod, where)


def pod_spec(service: str, overlay: str = PROD_OVERLAY) -> PodSpec:
    """Pod requests of `service` from the rendered overlay; read from the base manifests when it cannot render."""
    try:
        documents = render(overlay)
    except (ManifestError, OSError) as error:
        fallback = base_pod_spec(service, overlay)
        fallback.source = f"FALLBACK: {fallback.source} (rendering {overlay} failed: {error})"
        return fallback
    found = pod_spec_from_documents(documents, service, f"rendered overlay {overlay}")
    if found is None or not found.requests:
        raise core.OpsError(f"no Deployment {service!r} with resource requests in overlay {overlay}")
    return found


def choose_nodegroup(spec: PodSpec, groups: list[NodeGroup]) -> NodeGroup:
    """The first node group the pod can be scheduled on (ops.k8s.placement, as the policies and diagram place it)."""
    fitting = placement.fitting_groups(spec.scheduling_pod(), groups)
    if not fitting:
        raise LookupError(f"no node group fits {spec.service} (constraints {spec.node_selector})")
    return fitting[0]


def pods_per_node(spec: PodSpec, group: NodeGroup) -> int:
    """How many pods of `spec` fit on one node of `group`, by every resource the pod requests."""
    fits = [int(parse_quantity(group.allocatable.get("pods", "110")))]
    for resource, amount in spec.requests.items():
        if amount > 0:
            fits.append(int(group.allocatable_amount(resource) // amount))
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
    headroom: float = HEADROOM,
    min_replicas: int = MIN_REPLICAS,
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
    # A per-zone entry (nodegroups.yaml perZone) is one managed group per zone: count all of them.
    nodes = max(group.total_min_size, math.ceil(replicas / fit)) if fit > 0 else 0
    if fit == 0:
        notes.append(f"a pod does not fit on one {group.instance_type} node at all")
    if nodes > group.total_max_size:
        notes.append(f"needs {nodes} nodes but node group {group.name} has maxSize {group.total_max_size}")
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
        nodes_within_max=nodes <= group.total_max_size,
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


@dataclass
class CapacityOptions:
    """What `invoke bench.capacity` was asked for."""

    service: str = SERVICE
    target_rps: float = TARGET_RPS
    slo_p99_ms: float = load.SLO_P99_MS
    headroom: float = HEADROOM
    min_replicas: int = MIN_REPLICAS
    steps: Path | None = None  # steps.json of a step run; default: the newest under results/load/
    run_step: bool = False  # run a step load test first
    step_duration: str = STEP_DURATION
    max_rate: float = load.MAX_RATE


def run_capacity(opts: CapacityOptions, folder: Path | None = None) -> CapacityPlan | None:
    """The `invoke bench.capacity` flow: a step run when asked (or when there is none), the plan, the report in `folder`
    (default results/capacity/<timestamp>). Under a dry run it plans the step run and returns None."""
    steps = opts.steps
    if opts.run_step or (steps is None and load.find_latest(results_dir("load"), "steps.json") is None):
        step_folder = new_run_dir("load")
        load.run_load(
            load.LoadOptions(
                step=True, slo_p99_ms=opts.slo_p99_ms, duration=opts.step_duration, max_rate=opts.max_rate
            ),
            step_folder,
        )
        steps = step_folder / "steps.json"
    if is_dry():
        console.print(f"would plan {opts.service} for {opts.target_rps:g} rps from {steps or 'the newest step run'}")
        return None
    steps = steps or load.find_latest(results_dir("load"), "steps.json")
    if steps is None or not steps.is_file():
        raise core.OpsError(f"no step run found (looked for {steps}); run `invoke bench.load --step` first")
    run = StepRun.load(steps)
    plan = plan_capacity(
        run,
        service=opts.service,
        target_rps=opts.target_rps,
        slo_p99_ms=opts.slo_p99_ms,
        headroom=opts.headroom,
        min_replicas=opts.min_replicas,
        steps_file=str(steps),
    )
    written = write_report(plan, run, folder or new_run_dir("capacity"))
    out.print(json.dumps({k: plan.to_dict()[k] for k in ("replicas", "nodegroup", "nodes", "hpa")}, indent=2))
    for note in plan.notes:
        out.print(f"- {note}")
    console.print(f"report: {written['report']}  plot: {written['plot']}")
    return plan
