"""The policies every overlay must pass, and `validate_overlay`: render + strict schemas + policies, one report."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from ops import checkov as ops_checkov
from ops import core
from ops.images.versions import load_versions as versions
from ops.k8s import addons, budget, karpenter, platform
from ops.k8s.nodegroups import ACCELERATOR_LABEL, GPU_TAINT_KEY, NODEGROUPS_PATH, ZONE_LABEL, load_nodegroups
from ops.k8s.objects import (
    GPU_RESOURCE,
    NODE_AUTOSCALER_SETTINGS,
    Obj,
    container_env,
    containers,
    find,
    hpa_for,
    image_tag,
    parse_quantity,
    pdbs_for,
    prestop_sleep_seconds,
    ref,
    selects,
    workloads,
)
from ops.k8s.placement import placement, tolerates
from ops.k8s.render import (
    OVERLAYS_DIR,
    PARITY_COMPONENT,
    ManifestError,
    is_eks,
    is_parity,
    kustomize_version,
    render,
    render_with_components,
)
from ops.k8s.schema import schema_errors, schema_version
from serving.settings import ServingSettings  # type: ignore[import-untyped, unused-ignore]

# Views of the service registry (ops.core): Deployment name -> settings env prefix, and which one wants a GPU.
SERVICES = {s.name: s.env_prefix for s in core.SERVICES.values()}
GPU_SERVICE = next(s.name for s in core.SERVICES.values() if s.gpu)
SERVICE_UID = core.SERVICE_UID
SERVICE_PORT = core.CONTAINER_PORT
# The runtime's own default, read from it (a ConfigMap without <PREFIX>DRAIN_TIMEOUT_S gets this).
DEFAULT_DRAIN_TIMEOUT_S = float(ServingSettings.model_fields["drain_timeout_s"].default)

# Workloads (kind/name) that may tolerate the GPU taint without requesting a GPU: node agents.
GPU_NODE_AGENTS = ("DaemonSet/nvidia-device-plugin", "DaemonSet/dcgm-exporter")
# The optional standing GPU headroom (components/gpu-headroom): a pause pod that holds one GPU node warm
# at a negative priority, preempted by the first GPU pod that needs the room.
GPU_HEADROOM = "Deployment/gpu-headroom"
HEADROOM_PRIORITY_CLASS = "eks-inference-headroom"
# The node autoscalers an EKS overlay chooses between (components/<name>): exactly one, the `node_autoscaler` of
# its cluster (ops.infra.settings reads the choice from the overlay).
NODE_AUTOSCALERS = {"cluster-autoscaler": "Deployment/cluster-autoscaler", karpenter.CONTROLLER: "Deployment/karpenter"}
# Workloads that must stay on the CPU node group in the EKS overlays (and the overlay's node autoscaler).
CPU_POOL_WORKLOADS = ("Deployment/text-classifier",)
GPU_POOL_WORKLOADS = ("Deployment/image-classifier", *GPU_NODE_AGENTS)

# Add-on container -> (versions.toml [addons] key, image repository).
ADDON_IMAGES = {
    "nvidia-device-plugin": ("nvidia_device_plugin", "nvcr.io/nvidia/k8s-device-plugin"),
    "dcgm-exporter": ("dcgm_exporter", "nvcr.io/nvidia/k8s/dcgm-exporter"),
    "cluster-autoscaler": ("cluster_autoscaler", "registry.k8s.io/autoscaling/cluster-autoscaler"),
    karpenter.CONTROLLER: ("karpenter", karpenter.CONTROLLER_IMAGE),
    "pause": ("pause", "registry.k8s.io/pause"),
}
# Add-ons only an optional component renders (components/gpu-headroom): not missing when absent.
OPTIONAL_ADDONS = ("pause",)

# The namespace the EKS overlays put the services in, and the guardrails there.
SERVICE_NAMESPACE = "inference"
SERVING_PRIORITY_CLASS = "eks-inference-serving"
# Priority classes Kubernetes reserves for itself start here; ours must stay below.
SYSTEM_PRIORITY_FLOOR = 1_000_000_000
# GPU node agents run on every GPU node whatever else wants the room.
NODE_AGENT_PRIORITY_CLASS = "system-node-critical"
DNS_PORT = 53
# Services whose API fetches caller-given URLs (`image_url`), from the service registry: they need internet
# egress, and only they may have it.
FETCHING_SERVICES = tuple(s.name for s in core.SERVICES.values() if s.fetches_urls)
# Where URL fetching connects (http and https default ports; other ports need FETCH_ALLOWED_HOSTS).
FETCH_PORTS = (80, 443)
IPv4Net = ipaddress.IPv4Network
INTERNET_V4 = ipaddress.IPv4Network("0.0.0.0/0")
# What a NetworkPolicy must never open to a service's egress on any port: the NetworkPolicy half of the SSRF
# defence (the fetcher's own guard, serving.fetch.is_forbidden_address, refuses these and more).
NON_PUBLIC_V4: tuple[IPv4Net, ...] = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "10.0.0.0/8",  # RFC 1918
        "172.16.0.0/12",  # RFC 1918
        "192.168.0.0/16",  # RFC 1918
        "100.64.0.0/10",  # CGNAT, RFC 6598
        "169.254.0.0/16",  # link-local: instance metadata, the Pod Identity agent
        "127.0.0.0/8",  # loopback
    )
)
# The VPC CNI bug an ipBlock `except` triggers next to a ports-only rule or a second block of the same CIDR.
VPC_CNI_EXCEPT_BUG = "aws/aws-network-policy-agent#326"

# What an overlay declares about the platform it runs on: annotations on its Namespace. The platform
# (not this repository) installs the metrics adapters, so the overlay says which ones it has.
EXTERNAL_METRICS_PROVIDER_ANNOTATION = "eks-inference.io/external-metrics-provider"
CUSTOM_METRICS_PROVIDER_ANNOTATION = "eks-inference.io/custom-metrics-provider"
# HPA metric type -> (annotation naming its provider, providers this repository knows how to feed).
METRIC_PROVIDERS = {
    "External": (EXTERNAL_METRICS_PROVIDER_ANNOTATION, ("datadog-cluster-agent",)),
    "Pods": (CUSTOM_METRICS_PROVIDER_ANNOTATION, ("prometheus-adapter", "datadog-cluster-agent")),
    "Object": (CUSTOM_METRICS_PROVIDER_ANNOTATION, ("prometheus-adapter", "datadog-cluster-agent")),
}
DATADOG_METRIC_PREFIX = "datadogmetric@"
# The ConfigMap that names an EKS overlay's cluster (generated, so its rendered name has a content hash).
# Kubernetes' built-in PriorityClasses: not rendered, always there.
BUILTIN_PRIORITIES = {"system-cluster-critical": 2_000_000_000, "system-node-critical": 2_000_001_000}


Policy = Callable[[str, list[Obj]], list[str]]
POLICIES: dict[str, Policy] = {}


def policy(name: str) -> Callable[[Policy], Policy]:
    """Register a policy under `name`."""

    def register(fn: Policy) -> Policy:
        POLICIES[name] = fn
        return fn

    return register


@policy("checkov")
def check_checkov(overlay: str, objects: list[Obj]) -> list[str]:
    """checkov's Kubernetes checks (resources, probes, security context, image pinning, pull policy, ...): no
    finding unless the object carries a `checkov.io/skip<N>: <CHECK>=<reason>` annotation saying why."""
    return [f"{f} ({f.name})" for f in ops_checkov.scan_objects(objects).failed]


@policy("service-probes")
def check_service_probes(overlay: str, objects: list[Obj]) -> list[str]:
    """The services' probes hit the runtime's own endpoints: startup and readiness /readyz, liveness /healthz."""
    out = []
    expected = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for obj, spec in workloads(objects):
        for c in spec.get("containers", []):
            if c["name"] not in SERVICES:
                continue
            for probe, path in expected.items():
                got = c.get(probe, {}).get("httpGet", {}).get("path")
                if got != path:
                    out.append(f"{ref(obj)} container {c['name']}: {probe} should GET {path}, has {got}")
    return out


@policy("service-user")
def check_service_user(overlay: str, objects: list[Obj]) -> list[str]:
    """The services run as the image's own user (core.SERVICE_UID), with /tmp an emptyDir under the read-only root.

    The generic container rules (non-root, read-only root, capabilities, seccomp) are checkov's."""
    out = []
    for obj, spec in workloads(objects):
        pod_sc = spec.get("securityContext", {})
        for c in containers(spec):
            if c["name"] not in SERVICES:
                continue
            uid = c.get("securityContext", {}).get("runAsUser", pod_sc.get("runAsUser"))
            if uid != SERVICE_UID:
                out.append(f"{ref(obj)} container {c['name']}: runAsUser should be {SERVICE_UID}, is {uid}")
            out.extend(_tmp_is_emptydir(obj, spec, c))
    return out


def _tmp_is_emptydir(obj: Obj, spec: Obj, container: Obj) -> list[str]:
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    # The container's /tmp path is inspected, nothing is written to the host's /tmp.
    for mount in container.get("volumeMounts", []):
        if mount["mountPath"] == "/tmp" and "emptyDir" in volumes.get(mount["name"], {}):  # noqa: S108
            return []
    return [f"{ref(obj)} container {container['name']}: /tmp must be an emptyDir mount (read-only root fs)"]


def service_base(name: str, overlay: str) -> str:
    """Which image build (`invoke images.build` base) a service runs in an overlay: cuda or cpu."""
    return "cuda" if name == GPU_SERVICE and is_eks(overlay) and not is_parity(overlay) else "cpu"


@policy("image-tags")
def check_image_tags(overlay: str, objects: list[Obj]) -> list[str]:
    """EKS: services come from ECR as the overlay's build (-cuda / -cpu); parity runs the kind-loaded dev build.

    An untagged or `latest` image anywhere is checkov's (CKV_K8S_14)."""
    out = []
    for obj, spec in workloads(objects):
        for c in containers(spec):
            image, tag = c["image"], image_tag(c["image"])
            if not is_eks(overlay):
                continue
            if is_parity(overlay):
                # The parity cluster's nodes run the CPU builds `kind load` put there (components/kind-parity).
                if c["name"] in SERVICES and image != f"{core.IMAGE_PREFIX}/{c['name']}:dev-cpu":
                    out.append(
                        f"{ref(obj)} container {c['name']}: parity image should be the kind-loaded dev-cpu build"
                    )
            elif c["name"] in SERVICES and not re.match(
                r"^\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com/eks-inference/" + re.escape(c["name"]) + ":", image
            ):
                out.append(f"{ref(obj)} container {c['name']}: image {image} is not the ECR eks-inference image")
            base = service_base(c["name"], overlay)
            if c["name"] in SERVICES and not str(tag).endswith(f"-{base}"):
                out.append(f"{ref(obj)} container {c['name']}: tag {tag} should be the -{base} build")
    return out


@policy("gpu-isolation")
def check_gpu_isolation(overlay: str, objects: list[Obj]) -> list[str]:
    """Only the GPU service requests nvidia.com/gpu; only it and GPU node agents tolerate the GPU taint."""
    out = []
    taint = next(
        (t for g in load_nodegroups().values() for t in g.taints if t["key"] == GPU_TAINT_KEY),
        {"key": GPU_TAINT_KEY, "value": "true", "effect": "NoSchedule"},
    )
    for obj, spec in workloads(objects):
        requests_gpu = any(
            GPU_RESOURCE in c.get("resources", {}).get(kind, {})
            for c in containers(spec)
            for kind in ("requests", "limits")
        )
        is_gpu_service = obj["kind"] == "Deployment" and obj["metadata"]["name"] == GPU_SERVICE
        is_gpu_service = is_gpu_service or ref(obj) == GPU_HEADROOM  # holds a GPU for the GPU service
        if requests_gpu and not (is_gpu_service and is_eks(overlay)):
            out.append(f"{ref(obj)}: requests {GPU_RESOURCE} but is not the GPU workload of an EKS overlay")
        if tolerates(spec.get("tolerations", []), taint) and not (
            (is_gpu_service and is_eks(overlay)) or ref(obj) in GPU_NODE_AGENTS
        ):
            out.append(f"{ref(obj)}: tolerates the GPU taint but is neither the GPU workload nor a GPU node agent")
    if is_eks(overlay):
        out.extend(_gpu_service_shape(objects, gpu=not is_parity(overlay)))
    else:
        for dep in find(objects, "Deployment", GPU_SERVICE):
            for c in dep["spec"]["template"]["spec"]["containers"]:
                device = container_env(objects, dep["spec"]["template"]["spec"], c).get("IMAGE_CLASSIFIER_DEVICE")
                if device != "cpu":
                    out.append(f"{ref(dep)}: IMAGE_CLASSIFIER_DEVICE should be cpu without a GPU, is {device}")
    return out


def _gpu_service_shape(objects: list[Obj], gpu: bool = True) -> list[str]:
    """The GPU service's EKS shape; `gpu=False` for the parity cluster, where it keeps prod's placement and GPU
    request but runs the model on the CPU (its nodes' GPU is advertised, not real)."""
    out = []
    deps = find(objects, "Deployment", GPU_SERVICE)
    if not deps:
        return [f"Deployment/{GPU_SERVICE} is missing"]
    dep = deps[0]
    spec = dep["spec"]["template"]["spec"]
    c = next(c for c in spec["containers"] if c["name"] == GPU_SERVICE)
    limit = c.get("resources", {}).get("limits", {}).get(GPU_RESOURCE)
    device = container_env(objects, spec, c).get("IMAGE_CLASSIFIER_DEVICE")
    if str(limit) != "1":  # the parity cluster too: its gpu-t4 stand-ins advertise one (ops.k8s.parity)
        out.append(f"{ref(dep)}: limits must have {GPU_RESOURCE}: 1")
    if gpu and device != "cuda":
        out.append(f"{ref(dep)}: IMAGE_CLASSIFIER_DEVICE must be cuda")
    if not gpu and device != "cpu":
        out.append(f"{ref(dep)}: on the parity cluster it runs on cpu, the GPU being a stand-in ({PARITY_COMPONENT})")
    supported = sorted(g["accelerator_label"] for g in versions()["gpus"])
    terms = (
        spec.get("affinity", {})
        .get("nodeAffinity", {})
        .get("requiredDuringSchedulingIgnoredDuringExecution", {})
        .get("nodeSelectorTerms", [])
    )
    accel = [e for t in terms for e in t.get("matchExpressions", []) if e["key"] == ACCELERATOR_LABEL]
    if not accel or any(e["operator"] != "In" or sorted(e.get("values", [])) != supported for e in accel):
        out.append(
            f"{ref(dep)}: required node affinity must be {ACCELERATOR_LABEL} In {supported} "
            "(the [[gpus]] accelerator labels of base-images/versions.toml)"
        )
    return out


@policy("node-pools")
def check_node_pools(overlay: str, objects: list[Obj]) -> list[str]:
    """EKS: CPU workloads can only land on the CPU node group, GPU ones only on the GPU node group."""
    if not is_eks(overlay):
        return []
    out = []
    where = placement(objects)
    roles = {g.name: g.role for g in load_nodegroups().values()}
    optional = [GPU_HEADROOM] if GPU_HEADROOM in where else []
    cpu = [*CPU_POOL_WORKLOADS, *(NODE_AUTOSCALERS[a] for a in node_autoscalers(objects))]
    pools = [*((w, "cpu") for w in cpu), *((w, "gpu") for w in [*GPU_POOL_WORKLOADS, *optional])]
    for workload, role in pools:
        if workload not in where:
            out.append(f"{workload}: missing from the overlay")
            continue
        groups = where[workload]
        if not groups:
            out.append(f"{workload}: fits no node group in {NODEGROUPS_PATH.name}")
        wrong = [g for g in groups if roles[g] != role]
        if wrong:
            out.append(f"{workload}: may be scheduled on {wrong}, should only run on {role} node groups")
    for workload, groups in where.items():
        if not groups:
            out.append(f"{workload}: fits no node group in {NODEGROUPS_PATH.name}")
    return sorted(set(out))


@policy("addon-versions")
def check_addon_versions(overlay: str, objects: list[Obj]) -> list[str]:
    """Add-on images match [addons] in versions.toml (tag, and digest where recorded); cluster-autoscaler's minor
    equals [eks].kubernetes_minor."""
    out = []
    addons, k8s_minor = versions()["addons"], versions()["eks"]["kubernetes_minor"]
    seen = set()
    for obj, spec in workloads(objects):
        for c in containers(spec):
            if c["name"] not in ADDON_IMAGES:
                continue
            key, repo = ADDON_IMAGES[c["name"]]
            seen.add(c["name"])
            # By digest where versions.toml records one (`<key>_digest`); else the object says why not (checkov).
            digest = addons.get(f"{key}_digest")
            expected = f"{repo}:{addons[key]}" + (f"@{digest}" if digest else "")
            if c["image"] != expected:
                out.append(f"{ref(obj)}: image {c['image']} should be {expected} ([addons].{key})")
            if c["name"] == "cluster-autoscaler":
                minor = ".".join(str(image_tag(c["image"].split("@", 1)[0]) or "").lstrip("v").split(".")[:2])
                if minor != k8s_minor:
                    out.append(f"{ref(obj)}: cluster-autoscaler {minor} must match Kubernetes {k8s_minor}")
    if is_eks(overlay):
        # The node autoscalers are alternatives (policy node-autoscaler says when there is not exactly one).
        chosen = set(NODE_AUTOSCALERS) if seen & set(NODE_AUTOSCALERS) else set()
        optional = {*OPTIONAL_ADDONS, *(set(NODE_AUTOSCALERS) - seen)} if chosen else set(OPTIONAL_ADDONS)
        out.extend(f"add-on {name} is missing" for name in sorted(set(ADDON_IMAGES) - seen - optional))
    return out


def node_autoscalers(objects: list[Obj]) -> list[str]:
    """The node autoscalers the rendered objects run (names of NODE_AUTOSCALERS)."""
    rendered = {ref(obj) for obj in find(objects, "Deployment")}
    return [name for name, workload in NODE_AUTOSCALERS.items() if workload in rendered]


def both_autoscalers(chosen: Iterable[str]) -> str:
    return f"the overlay renders both {' and '.join(chosen)}: choose one (its components/ entry) per overlay"


def listed_node_autoscalers(overlay: str, components: Iterable[str] = ()) -> list[str]:
    """The node autoscaler components an overlay's kustomization lists, with `components` added (names of
    NODE_AUTOSCALERS): read before rendering, since two of them cannot render together."""
    kustomization = yaml.safe_load((OVERLAYS_DIR / overlay / "kustomization.yaml").read_text()) or {}
    listed = {str(c).rstrip("/").rsplit("/", 1)[-1] for c in [*kustomization.get("components", []), *components]}
    return [name for name in NODE_AUTOSCALERS if name in listed]


@policy("node-autoscaler")
def check_node_autoscaler(overlay: str, objects: list[Obj]) -> list[str]:
    """EKS: exactly one node autoscaler (components/cluster-autoscaler or components/karpenter), never both: two
    would each launch nodes for the same pending pods and remove each other's. The local kind overlays run none; the
    parity cluster keeps prod's, placed by prod's rules (tests/parity), with no node group to scale there."""
    chosen = node_autoscalers(objects)
    if not is_eks(overlay):
        return [f"{NODE_AUTOSCALERS[a]}: a kind cluster has no node groups to scale" for a in chosen]
    if len(chosen) > 1:
        return [both_autoscalers(chosen)]
    if not chosen:
        return [f"no node autoscaler: list one of components/{' or components/'.join(NODE_AUTOSCALERS)}"]
    return []


@policy("karpenter-pools")
def check_karpenter_pools(overlay: str, objects: list[Obj]) -> list[str]:
    """Karpenter: every NodePool and EC2NodeClass is generated from a nodegroups.yaml entry; GPU pods fit only GPU
    NodePools and CPU pods never do; the GPU NodePools' limits hold the GPU service at its HPA maximum plus its
    rollout surge; the GPU pools launch the NVIDIA AMI; every node class asks for IMDSv2 with a hop limit of 1."""
    nodepools, classes = find(objects, "NodePool"), find(objects, "EC2NodeClass")
    if not nodepools and not classes:
        return []
    out = []
    groups = load_nodegroups()
    class_names = {c["metadata"]["name"] for c in classes}
    for obj in [*nodepools, *classes]:
        entry = (obj["metadata"].get("annotations") or {}).get(karpenter.NODEGROUP_ANNOTATION)
        if entry not in groups:
            out.append(f"{ref(obj)}: {karpenter.NODEGROUP_ANNOTATION} must name an entry of {NODEGROUPS_PATH.name}")
    if out:
        return out
    pools = karpenter.pool_groups(objects, groups)
    for pool in nodepools:
        node_class = pool["spec"]["template"]["spec"]["nodeClassRef"]["name"]
        if node_class not in class_names:
            out.append(f"{ref(pool)}: nodeClassRef {node_class} is not rendered")
        if not pool["spec"].get("disruption", {}).get("budgets"):
            out.append(f"{ref(pool)}: no disruption budgets: a consolidation or AMI rollout could take every node")
    where = placement(objects, pools.values())
    optional = [GPU_HEADROOM] if GPU_HEADROOM in where else []
    for workload in [*GPU_POOL_WORKLOADS, *optional]:
        wrong = [p for p in where.get(workload, []) if pools[p].role != "gpu"]
        if wrong:
            out.append(f"{workload}: may be scheduled on NodePools {wrong}, should only run on GPU NodePools")
    for workload, fits in where.items():
        if workload in GPU_POOL_WORKLOADS or workload in optional:
            continue
        gpu = [p for p in fits if pools[p].role == "gpu"]
        if gpu:
            out.append(f"{workload}: may be scheduled on the GPU NodePools {gpu}; only GPU pods may run there")
    limit = sum(int(parse_quantity(p["spec"].get("limits", {}).get(GPU_RESOURCE, 0))) for p in nodepools)
    hpa = hpa_for(objects, GPU_SERVICE)
    peak = gpu_peak(objects)
    if hpa is not None and limit < peak:
        out.append(
            f"the GPU NodePools' limits hold {limit} {GPU_RESOURCE} but a rollout at the HPA maximum needs {peak} "
            "(maxReplicas + maxSurge): past the limit Karpenter launches nothing and the rollout stalls"
        )
    for node_class in classes:
        group = groups[node_class["metadata"]["annotations"][karpenter.NODEGROUP_ANNOTATION]]
        meta = node_class["spec"].get("metadataOptions") or {}
        if meta.get("httpTokens") != "required" or int(meta.get("httpPutResponseHopLimit", 2)) != 1:
            out.append(f"{ref(node_class)}: metadataOptions must be httpTokens required, httpPutResponseHopLimit 1")
        if node_class["spec"].get("amiSelectorTerms") != karpenter.ami_selector(group):
            out.append(f"{ref(node_class)}: amiSelectorTerms should be {karpenter.ami_selector(group)}")
    return out


@policy("hpa-owns-replicas")
def check_hpa_owns_replicas(overlay: str, objects: list[Obj]) -> list[str]:
    """A Deployment scaled by an HPA leaves spec.replicas out, so that no deploy resets what the HPA chose.

    `invoke deploy` applies server-side with --force-conflicts: a `replicas` in the manifest takes the
    field back from the HPA's field manager on every deploy, dropping a scaled-up service to that value.
    """
    out = []
    for dep in find(objects, "Deployment"):
        hpa = hpa_for(objects, dep["metadata"]["name"])
        if hpa is not None and "replicas" in dep["spec"]:
            out.append(
                f"{ref(dep)}: sets replicas {dep['spec']['replicas']} but {ref(hpa)} owns the replica count; "
                "remove it (and any `replicas:` entry in the overlay)"
            )
    return out


@policy("disruption")
def check_disruption(overlay: str, objects: list[Obj]) -> list[str]:
    """Multi-replica Deployments have a PDB; HPA minReplicas >= PDB minAvailable + 1."""
    out = []
    for dep in find(objects, "Deployment"):
        name = dep["metadata"]["name"]
        hpa = hpa_for(objects, name)
        most = int(hpa["spec"]["maxReplicas"]) if hpa else int(dep["spec"].get("replicas", 1))
        pdbs = pdbs_for(objects, dep)
        # A one-node kind cluster cannot honour a PDB during a drain (the local overlays delete them).
        if most > 1 and not pdbs and is_eks(overlay):
            out.append(f"{ref(dep)}: runs up to {most} replicas but no PodDisruptionBudget selects it")
        if hpa:
            least = int(hpa["spec"].get("minReplicas", 1))
            for pdb in pdbs:
                min_available = pdb["spec"].get("minAvailable")
                if min_available is None:
                    continue
                floor = (
                    math.ceil(least * float(str(min_available).rstrip("%")) / 100)
                    if str(min_available).endswith("%")
                    else int(min_available)
                )
                if least < floor + 1:
                    out.append(
                        f"{ref(hpa)}: minReplicas {least} must be >= {ref(pdb)} minAvailable {floor} + 1, "
                        "or no node can ever be drained"
                    )
    return out


def _scaled_value(value: Any, replicas: int, round_up: bool) -> int:
    """An IntOrString rollout bound resolved against `replicas` (Kubernetes rounds surge up, unavailable down)."""
    text = str(value)
    if text.endswith("%"):
        exact = replicas * float(text[:-1]) / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(text)


def rollout_bounds(dep: Obj, replicas: int) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) of a Deployment's RollingUpdate at `replicas` pods, as the controller sees them."""
    strategy = dep["spec"].get("strategy", {})
    if strategy.get("type") == "Recreate":
        return 0, replicas
    rolling = strategy.get("rollingUpdate", {})
    surge = _scaled_value(rolling.get("maxSurge", "25%"), replicas, round_up=True)
    unavailable = _scaled_value(rolling.get("maxUnavailable", "25%"), replicas, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1  # the API server refuses both zero; the controller would need one to progress
    return surge, unavailable


def pod_gpus(spec: Obj) -> int:
    """nvidia.com/gpu one pod asks for (limits; a GPU request must equal its limit)."""
    limits = (c.get("resources", {}).get("limits", {}) for c in containers(spec))
    return sum(int(parse_quantity(lim.get(GPU_RESOURCE, 0))) for lim in limits)


def gpu_capacity() -> int:
    """GPUs the GPU node groups can hold at their maxSize (every zone's group of a per-zone entry)."""
    return sum(g.total_max_size * g.gpus_per_node for g in load_nodegroups().values() if g.role == "gpu")


def gpu_zone_capacity() -> dict[str, int]:
    """zone -> GPUs the GPU node groups can hold there at their maxSize."""
    out: dict[str, int] = {}
    for g in load_nodegroups().values():
        if g.role == "gpu":
            for zone, most in g.zone_max_sizes().items():
                out[zone] = out.get(zone, 0) + most * g.gpus_per_node
    return out


def zone_spread(spec: Obj) -> Obj | None:
    """A pod spec's topology spread constraint on the zone label, if it has one."""
    return next((t for t in spec.get("topologySpreadConstraints", []) if t["topologyKey"] == ZONE_LABEL), None)


def most_in_one_zone(pods: int, zones: int, max_skew: int) -> int:
    """The most of `pods` a hard zone spread (maxSkew) lets land in one of `zones`: x + (zones-1)(x - skew) <= pods."""
    return min(pods, (pods + (zones - 1) * max_skew) // zones)


def gpu_peak(objects: list[Obj]) -> int:
    """GPUs the GPU Deployments hold at once at their HPA maximum, mid-rollout (surge pods included)."""
    peak = 0
    for dep in find(objects, "Deployment"):
        gpus = pod_gpus(dep["spec"]["template"]["spec"])
        if not gpus:
            continue
        hpa = hpa_for(objects, dep["metadata"]["name"])
        most = int(hpa["spec"]["maxReplicas"]) if hpa else int(dep["spec"].get("replicas", 1))
        surge, _ = rollout_bounds(dep, most)
        peak += (most + surge) * gpus
    return peak


@policy("gpu-capacity")
def check_gpu_capacity(overlay: str, objects: list[Obj]) -> list[str]:
    """EKS: GPU Deployments at their HPA maximum, plus their rollout surge, fit the GPU node groups' maxSize.

    With maxSurge 1 and maxUnavailable 0 a rollout at maxReplicas starts one more GPU pod before it stops
    an old one; without a GPU for it the rollout stalls exactly when a hotfix is needed.
    """
    if not is_eks(overlay):
        return []
    hpa = hpa_for(objects, GPU_SERVICE)
    if hpa is None:
        return [f"no HPA for Deployment/{GPU_SERVICE}"]
    out = []
    total = gpu_capacity()
    most = int(hpa["spec"]["maxReplicas"])
    if most > total:
        out.append(f"{ref(hpa)}: maxReplicas {most} > {total} GPUs in the GPU node groups")
    peak = gpu_peak(objects)
    if most <= total < peak:
        out.append(
            f"a rollout at the HPA maximum needs {peak} GPUs (maxReplicas + maxSurge) but the GPU node groups "
            f"hold {total}: raise the GPU node group maxSize, lower maxReplicas, or roll with maxSurge 0"
        )
    out.extend(_gpu_zone_capacity(objects, most, peak))
    return out


def _gpu_zone_capacity(objects: list[Obj], most: int, peak: int) -> list[str]:
    """The same arithmetic per zone, for a hard (DoNotSchedule) zone spread of the GPU service.

    All zones up: the spread may put up to most_in_one_zone(peak) pods in any one zone, so every zone's groups
    must hold that many. One zone lost: the others must still hold the HPA maximum.
    """
    deps = find(objects, "Deployment", GPU_SERVICE)
    spread = zone_spread(deps[0]["spec"]["template"]["spec"]) if deps else None
    if spread is None or spread.get("whenUnsatisfiable") != "DoNotSchedule":
        return []
    zones = gpu_zone_capacity()
    skew = int(spread.get("maxSkew", 1))
    out = [
        f"node group {g.name} spans {len(g.zones)} zones: a hard zone spread needs one GPU node group per zone "
        "(nodegroups.yaml perZone), or a pod pending for one zone may get its node in another"
        for g in load_nodegroups().values()
        if g.role == "gpu" and not g.per_zone and len(g.zones) > 1
    ]
    need = most_in_one_zone(peak, len(zones), skew)
    for zone, held in sorted(zones.items()):
        if held < need:
            out.append(
                f"zone {zone}: a rollout at the HPA maximum spreads {peak} GPU pods over {len(zones)} zones "
                f"(maxSkew {skew}), up to {need} in one zone, but its GPU node groups hold {held}"
            )
    for lost in sorted(zones):
        rest = {z: n for z, n in zones.items() if z != lost}
        if not rest:
            out.append(f"zone {lost} is the only GPU zone: losing it leaves no GPU")
            continue
        need_rest = most_in_one_zone(most, len(rest), skew)
        short = [z for z, n in sorted(rest.items()) if n < need_rest]
        if sum(rest.values()) < most or short:
            out.append(
                f"without zone {lost} the other GPU zones hold {sum(rest.values())} GPUs "
                f"({', '.join(f'{z}: {n}' for z, n in sorted(rest.items()))}); the HPA maximum {most} needs "
                f"{need_rest} in each"
            )
    return out


@policy("gpu-provisioning-budget")
def check_gpu_provisioning_budget(overlay: str, objects: list[Obj]) -> list[str]:
    """EKS: the GPU service's budget parts are stated (autoscaler flag, image-pull allowance, startup probe), and
    its progressDeadlineSeconds is the budget (ops.k8s.budget), not Kubernetes' 600 s default."""
    if not is_eks(overlay):
        return []
    out = []
    autoscalers = find(objects, "Deployment", budget.AUTOSCALER)
    flags = [
        a
        for dep in autoscalers
        for c in containers(dep["spec"]["template"]["spec"])
        for a in [*c.get("command", []), *c.get("args", [])]
    ]
    if autoscalers and not any(f.startswith(budget.PROVISION_TIME_FLAG + "=") for f in flags):
        out.append(f"Deployment/{budget.AUTOSCALER}: state {budget.PROVISION_TIME_FLAG} (a part of the GPU budget)")
    try:
        found = budget.gpu_provisioning_budget(objects)
    except budget.BudgetError as exc:
        return [*out, str(exc)]
    if found is None:
        return out
    for dep in budget.gpu_deployments(objects):
        deadline = dep["spec"].get("progressDeadlineSeconds")
        if deadline is None or int(deadline) < found.progress_deadline_s:
            out.append(
                f"{ref(dep)}: progressDeadlineSeconds {deadline} < the GPU provisioning budget "
                f"{found.progress_deadline_s} s: a rollout waiting for a new GPU node would be reported as failed"
            )
    return out


@policy("termination")
def check_termination(overlay: str, objects: list[Obj]) -> list[str]:
    """terminationGracePeriodSeconds > preStop sleep + the app's drain timeout."""
    out = []
    for dep in find(objects, "Deployment"):
        spec = dep["spec"]["template"]["spec"]
        grace = float(spec.get("terminationGracePeriodSeconds", 30))
        for c in spec["containers"]:
            if c["name"] not in SERVICES:
                continue
            env = container_env(objects, spec, c)
            drain = float(env.get(SERVICES[c["name"]] + "DRAIN_TIMEOUT_S", DEFAULT_DRAIN_TIMEOUT_S))
            sleep = prestop_sleep_seconds(c)
            if sleep <= 0:
                out.append(f"{ref(dep)} container {c['name']}: no preStop sleep")
            if grace <= sleep + drain:
                out.append(
                    f"{ref(dep)}: terminationGracePeriodSeconds {grace:g} must exceed "
                    f"preStop {sleep:g} s + drain {drain:g} s"
                )
    return out


@policy("service-shape")
def check_service_shape(overlay: str, objects: list[Obj]) -> list[str]:
    """Both services exist with labels, settings ConfigMap, port, spread and the overlay's replica rules."""
    out = []
    for name, prefix in SERVICES.items():
        deps = find(objects, "Deployment", name)
        if not deps:
            out.append(f"Deployment/{name} is missing")
            continue
        dep = deps[0]
        spec = dep["spec"]["template"]["spec"]
        for where, labels in (
            ("metadata", dep["metadata"].get("labels", {})),
            ("pod template", dep["spec"]["template"]["metadata"].get("labels", {})),
        ):
            for key in ("app.kubernetes.io/name", "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by"):
                if key not in labels:
                    out.append(f"{ref(dep)}: {where} lacks label {key}")
        c = next((c for c in spec["containers"] if c["name"] == name), None)
        if c is None:
            out.append(f"{ref(dep)}: no container named {name}")
            continue
        env = container_env(objects, spec, c)
        if env.get(prefix + "PORT") != str(SERVICE_PORT):
            out.append(f"{ref(dep)}: {prefix}PORT should be {SERVICE_PORT} (from its ConfigMap)")
        if SERVICE_PORT not in [p["containerPort"] for p in c.get("ports", [])]:
            out.append(f"{ref(dep)}: container port {SERVICE_PORT} not declared")
        spread = {t["topologyKey"]: t for t in spec.get("topologySpreadConstraints", [])}
        zone = spread.get(ZONE_LABEL)
        # EKS GPU service: a hard zone spread (one GPU node group per zone); everything else prefers spreading.
        hard = name == GPU_SERVICE and is_eks(overlay)
        wanted = "DoNotSchedule" if hard else "ScheduleAnyway"
        if zone is None or zone["whenUnsatisfiable"] != wanted:
            out.append(f"{ref(dep)}: needs a {wanted} spread on {ZONE_LABEL}")
        elif hard and zone.get("nodeTaintsPolicy") != "Honor":
            out.append(f"{ref(dep)}: its zone spread needs nodeTaintsPolicy Honor (a dead zone's tainted nodes)")
        if "kubernetes.io/hostname" not in spread:
            out.append(f"{ref(dep)}: needs a spread on kubernetes.io/hostname")
        for t in spread.values():
            if not selects(t.get("labelSelector", {}), dep["spec"]["template"]["metadata"].get("labels", {})):
                out.append(f"{ref(dep)}: spread on {t['topologyKey']} does not select its own pods")
        if not find(objects, "Service", name) or not find(objects, "ServiceAccount", name):
            out.append(f"{ref(dep)}: needs a Service and a ServiceAccount named {name}")
        if not is_eks(overlay):
            if int(dep["spec"].get("replicas", 1)) != 1:
                out.append(f"{ref(dep)}: local runs one replica")
            if hpa_for(objects, name) is None:
                out.append(f"{ref(dep)}: local scales it with an HPA too (metrics-server runs in kind)")
            if pdbs_for(objects, dep):
                out.append(f"{ref(dep)}: local has no PDB (one node cannot honour it during a drain)")
            if c["image"] != f"eks-inference/{name}:dev-cpu":
                out.append(f"{ref(dep)}: local image should be eks-inference/{name}:dev-cpu, is {c['image']}")
        elif hpa_for(objects, name) is None:
            out.append(f"{ref(dep)}: EKS overlays scale it with an HPA")
    return out


@policy("hpa-behavior")
def check_hpa_behavior(overlay: str, objects: list[Obj]) -> list[str]:
    """HPAs are autoscaling/v2 on CPU utilization, scale up with no delay and down after a stabilization window."""
    out = []
    for hpa in find(objects, "HorizontalPodAutoscaler"):
        if hpa["apiVersion"] != "autoscaling/v2":
            out.append(f"{ref(hpa)}: use autoscaling/v2")
        metrics = hpa["spec"].get("metrics", [])
        if not any(m.get("type") == "Resource" and m["resource"]["name"] == "cpu" for m in metrics):
            out.append(f"{ref(hpa)}: no CPU utilization metric")
        behavior = hpa["spec"].get("behavior", {})
        up = behavior.get("scaleUp", {}).get("stabilizationWindowSeconds")
        down = behavior.get("scaleDown", {}).get("stabilizationWindowSeconds")
        if up is None or down is None or not up < down:
            out.append(f"{ref(hpa)}: behavior must scale up faster (window {up}) than down (window {down})")
    return out


def _namespace_annotations(objects: list[Obj], namespace: str) -> dict[str, str]:
    ns = next((o for o in find(objects, "Namespace", namespace)), None)
    return dict((ns or {}).get("metadata", {}).get("annotations") or {})


def _port_matches(rule_port: Obj, port: int | str, named: Mapping[str, int], protocol: str = "TCP") -> bool:
    if rule_port.get("protocol", "TCP") != protocol:
        return False
    wanted = rule_port.get("port")
    if wanted is None:
        return True
    number = named.get(str(port), port) if isinstance(port, str) else port
    if isinstance(wanted, str):
        return wanted == port or named.get(wanted) == number
    end = int(rule_port.get("endPort") or wanted)
    return isinstance(number, int) and int(wanted) <= number <= end


def _policies_selecting(objects: list[Obj], namespace: str, labels: Mapping[str, str], kind: str) -> list[Obj]:
    """NetworkPolicies in `namespace` whose podSelector selects `labels` and that govern `kind` (Ingress|Egress)."""
    out = []
    for np_ in find(objects, "NetworkPolicy"):
        if np_["metadata"].get("namespace") != namespace:
            continue
        spec = np_["spec"]
        selector = spec.get("podSelector", {})
        if selector and not selects(selector, labels):
            continue
        types = spec.get("policyTypes") or (["Ingress", "Egress"] if "egress" in spec else ["Ingress"])
        if kind in types:
            out.append(np_)
    return out


def ingress_allowed(
    objects: list[Obj], namespace: str, labels: Mapping[str, str], port: int | str, named: Mapping[str, int]
) -> bool:
    """Whether some NetworkPolicy lets traffic from anywhere reach `port` of pods with `labels`."""  # fmt: skip
    for np_ in _policies_selecting(objects, namespace, labels, "Ingress"):
        for rule in np_["spec"].get("ingress") or []:
            if rule.get("from"):
                continue  # restricted to some peers; the service port must be open to its clients
            if not rule.get("ports") or any(_port_matches(p, port, named) for p in rule["ports"]):
                return True
    return False


def dns_egress_allowed(objects: list[Obj], namespace: str, labels: Mapping[str, str]) -> bool:
    """Whether pods with `labels` may reach port 53 over both UDP and TCP."""
    for protocol in ("UDP", "TCP"):
        ok = any(
            not rule.get("ports") or any(_port_matches(p, DNS_PORT, {}, protocol) for p in rule["ports"])
            for np_ in _policies_selecting(objects, namespace, labels, "Egress")
            for rule in np_["spec"].get("egress") or []
        )
        if not ok:
            return False
    return True


def _egress_rules(objects: list[Obj], namespace: str, labels: Mapping[str, str]) -> list[Obj]:
    return [
        rule
        for np_ in _policies_selecting(objects, namespace, labels, "Egress")
        for rule in np_["spec"].get("egress") or []
    ]


def _minus(nets: Iterable[IPv4Net], holes: Iterable[IPv4Net]) -> list[IPv4Net]:
    """The addresses of `nets` outside every one of `holes`, as networks."""
    out = list(nets)
    for hole in holes:
        next_out: list[IPv4Net] = []
        for net in out:
            if net.subnet_of(hole):
                continue
            if hole.subnet_of(net):
                next_out.extend(net.address_exclude(hole))
            else:
                next_out.append(net)
        out = next_out
    return out


def _rule_v4_networks(rule: Obj) -> list[IPv4Net]:
    """IPv4 networks one egress rule reaches by address, on whatever ports it names.

    A rule with no `to` reaches every address; ipBlocks count with their `except`s taken out. Pod and
    namespace selectors reach pods, not addresses outside the cluster, so they add nothing here.
    """
    if not rule.get("to"):
        return [INTERNET_V4]
    out: list[IPv4Net] = []
    for peer in rule["to"]:
        block = peer.get("ipBlock")
        if not block:
            continue
        cidr = ipaddress.ip_network(block["cidr"], strict=False)
        if isinstance(cidr, IPv4Net):
            holes = [ipaddress.IPv4Network(e, strict=False) for e in block.get("except") or [] if ":" not in e]
            out.extend(_minus([cidr], holes))
    return out


def egress_v4_networks(
    objects: list[Obj], namespace: str, labels: Mapping[str, str], port: int | None = None
) -> list[IPv4Net]:
    """IPv4 networks the NetworkPolicies let pods with `labels` reach by address on TCP `port` (None: any port)."""
    return [
        net
        for rule in _egress_rules(objects, namespace, labels)
        if port is None or not rule.get("ports") or any(_port_matches(p, port, {}) for p in rule["ports"])
        for net in _rule_v4_networks(rule)
    ]


def _vpc_cni_except_bugs(objects: list[Obj], namespace: str, labels: Mapping[str, str]) -> list[str]:
    """Shapes the VPC CNI mis-enforces once an egress ipBlock has an `except` (aws/aws-network-policy-agent#326:
    a ports-only rule gets the `except` applied too, so DNS to a private ClusterIP drops; #180 and
    amazon-network-policy-controller-k8s#121: another rule on the same CIDR merges with it)."""
    rules = _egress_rules(objects, namespace, labels)
    excepting = [p["ipBlock"] for r in rules for p in r.get("to") or [] if p.get("ipBlock", {}).get("except")]
    if not excepting:
        return []
    out = []
    if any(rule.get("ports") and not rule.get("to") for rule in rules):
        out.append(
            f"an egress ipBlock with `except` next to a ports-only egress rule (no `to`): the VPC CNI applies the "
            f"`except` to that rule too ({VPC_CNI_EXCEPT_BUG}); name the rule's peers"
        )
    cidrs = [p["ipBlock"]["cidr"] for r in rules for p in r.get("to") or [] if p.get("ipBlock")]
    for block in excepting:
        if cidrs.count(block["cidr"]) > 1:
            out.append(
                f"ipBlock {block['cidr']} with `except` appears in more than one egress rule: the VPC CNI merges "
                f"them and mis-applies the `except` ({VPC_CNI_EXCEPT_BUG}, aws/aws-network-policy-agent#180)"
            )
    return out


def _egress_matches_contract(objects: list[Obj], dep: Obj, labels: Mapping[str, str]) -> list[str]:
    """Fetching services reach the public internet on the fetch ports and never a non-public range; others reach
    no address at all (DNS goes to CoreDNS pods by selector)."""
    name = dep["metadata"]["name"]
    out = []
    for port in FETCH_PORTS:
        reachable = egress_v4_networks(objects, SERVICE_NAMESPACE, labels, port)
        if name in FETCHING_SERVICES:
            missing = _minus(_minus([INTERNET_V4], NON_PUBLIC_V4), reachable)
            if missing:
                out.append(
                    f"{ref(dep)}: fetches caller-given URLs (image_url; fetches_urls in ops/core.py) but no "
                    f"NetworkPolicy lets it reach all public IPv4 addresses on TCP {port}; image_url requests "
                    "would fail (403 url_forbidden after the connect timeout)"
                )
        elif reachable:
            out.append(
                f"{ref(dep)}: fetches no URLs (ops/core.py) but a NetworkPolicy lets it reach addresses outside "
                f"the cluster on TCP {port}; it needs DNS egress only"
            )
    # Any port: a rule for some other port must not open these ranges either.
    reachable = egress_v4_networks(objects, SERVICE_NAMESPACE, labels)
    leaks = [str(n) for n in NON_PUBLIC_V4 if any(r.overlaps(n) for r in reachable)]
    if leaks:
        out.append(f"{ref(dep)}: its egress reaches non-public ranges {leaks} (VPC, metadata, loopback)")
    out.extend(f"{ref(dep)}: {v}" for v in _vpc_cni_except_bugs(objects, SERVICE_NAMESPACE, labels))
    return out


@policy("network-policy")
def check_network_policy(overlay: str, objects: list[Obj]) -> list[str]:
    """EKS: default-deny in the services' namespace, then their Service ports, their metrics port, DNS egress, and
    internet egress exactly for the services that fetch URLs (public IPv4 on TCP 80/443, no non-public range)."""
    if not is_eks(overlay):
        return []
    out = []
    default_deny = [
        np_
        for np_ in find(objects, "NetworkPolicy")
        if np_["metadata"].get("namespace") == SERVICE_NAMESPACE
        and not np_["spec"].get("podSelector")
        and set(np_["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not np_["spec"].get("ingress")
        and not np_["spec"].get("egress")
    ]
    if not default_deny:
        out.append(f"namespace {SERVICE_NAMESPACE}: no default-deny NetworkPolicy (podSelector {{}}, Ingress+Egress)")
    for dep in find(objects, "Deployment"):
        if dep["metadata"].get("namespace") != SERVICE_NAMESPACE:
            continue
        template = dep["spec"]["template"]
        labels = template["metadata"].get("labels", {})
        named = {
            p["name"]: p["containerPort"]
            for c in template["spec"]["containers"]
            for p in c.get("ports", [])
            if "name" in p
        }
        for svc in find(objects, "Service"):
            if svc["metadata"].get("namespace") != SERVICE_NAMESPACE or not selects(
                {"matchLabels": svc["spec"].get("selector", {})}, labels
            ):
                continue
            for port in svc["spec"].get("ports", []):
                target = port.get("targetPort", port["port"])
                if not ingress_allowed(objects, SERVICE_NAMESPACE, labels, target, named):
                    out.append(f"{ref(dep)}: no NetworkPolicy admits {ref(svc)} port {port['port']} (target {target})")
        for key, value in template["metadata"].get("annotations", {}).items():
            if key.startswith("ad.datadoghq.com/") and key.endswith(".checks"):
                for port_text in re.findall(r"%%host%%:(\d+)", value):
                    if not ingress_allowed(objects, SERVICE_NAMESPACE, labels, int(port_text), named):
                        out.append(f"{ref(dep)}: no NetworkPolicy admits the metrics scrape on port {port_text}")
        if not dns_egress_allowed(objects, SERVICE_NAMESPACE, labels):
            out.append(f"{ref(dep)}: no NetworkPolicy allows DNS egress (port {DNS_PORT}, UDP and TCP)")
        if dep["metadata"]["name"] in SERVICES:
            out.extend(_egress_matches_contract(objects, dep, labels))
    return out


# HPA metric types served by the Metrics API (metrics.k8s.io), which only metrics-server serves here.
RESOURCE_METRIC_TYPES = ("Resource", "ContainerResource")


def overlay_platform(overlay: str) -> addons.Platform:
    """Where an overlay runs: EKS, or a kind cluster (`invoke up`, or the parity cluster for eks-prod+kind-parity)."""
    return "eks" if is_eks(overlay) and not is_parity(overlay) else "kind"


@policy("cluster-addons")
def check_cluster_addons(overlay: str, objects: list[Obj]) -> list[str]:
    """What the rendered objects need from the cluster is in manifests/cluster-addons.yaml for the overlay's platform.

    An HPA on Resource metrics needs the Metrics API (metrics-server): EKS deploys none by default, and without
    it the HPA holds its minimum forever. NetworkPolicies need an engine, or they are only documentation.
    """
    platform = overlay_platform(overlay)
    needs: dict[str, list[str]] = {}
    for hpa in find(objects, "HorizontalPodAutoscaler"):
        if any(m.get("type") in RESOURCE_METRIC_TYPES for m in hpa["spec"].get("metrics", [])):
            needs.setdefault(addons.METRICS_API, []).append(ref(hpa))
    policies_ = find(objects, "NetworkPolicy")
    if policies_:
        needs.setdefault(addons.NETWORK_POLICY_ENGINE, []).append(f"{len(policies_)} NetworkPolicies")
    return [
        f"{', '.join(users)} need {capability}, but no add-on in {addons.ADDONS_PATH.name} provides it on {platform}"
        for capability, users in needs.items()
        if not addons.provided(capability, platform)
    ]


@policy("priority-and-quota")
def check_priority_and_quota(overlay: str, objects: list[Obj]) -> list[str]:
    """EKS: services run at their own PriorityClass; a ResourceQuota caps requests.nvidia.com/gpu at GPU capacity."""
    if not is_eks(overlay):
        return []
    out = []
    classes = {o["metadata"]["name"]: o for o in find(objects, "PriorityClass")}
    serving = classes.get(SERVING_PRIORITY_CLASS)
    if serving is None:
        out.append(f"PriorityClass/{SERVING_PRIORITY_CLASS} is missing")
    elif serving.get("globalDefault") or int(serving["value"]) >= SYSTEM_PRIORITY_FLOOR:
        out.append(
            f"{ref(serving)}: must not be the global default nor reach the system range ({SYSTEM_PRIORITY_FLOOR})"
        )
    for name in SERVICES:
        for dep in find(objects, "Deployment", name):
            got = dep["spec"]["template"]["spec"].get("priorityClassName")
            if got != SERVING_PRIORITY_CLASS:
                out.append(f"{ref(dep)}: priorityClassName should be {SERVING_PRIORITY_CLASS}, is {got}")
    key = f"requests.{GPU_RESOURCE}"
    quotas = [
        q
        for q in find(objects, "ResourceQuota")
        if q["metadata"].get("namespace") == SERVICE_NAMESPACE and key in q["spec"].get("hard", {})
    ]
    if not quotas:
        out.append(f"namespace {SERVICE_NAMESPACE}: no ResourceQuota on {key}")
    total, peak = gpu_capacity(), gpu_peak(objects)
    for q in quotas:
        hard = int(parse_quantity(q["spec"]["hard"][key]))
        if hard < peak:
            out.append(f"{ref(q)}: {key} {hard} < {peak} GPUs a rollout at the HPA maximum holds; it would stall")
        if hard > total:
            out.append(f"{ref(q)}: {key} {hard} > {total} GPUs the GPU node groups can hold")
    return out


@policy("node-agents")
def check_node_agents(overlay: str, objects: list[Obj]) -> list[str]:
    """GPU node agents are node-critical; Go agents set GOMEMLIMIT below their memory limit."""
    out = []
    for obj, spec in workloads(objects):
        if ref(obj) not in GPU_NODE_AGENTS:
            continue
        if spec.get("priorityClassName") != NODE_AGENT_PRIORITY_CLASS:
            out.append(f"{ref(obj)}: priorityClassName should be {NODE_AGENT_PRIORITY_CLASS}")
        if obj["metadata"]["name"] != "dcgm-exporter":
            continue
        for c in spec["containers"]:
            limit = parse_quantity(c.get("resources", {}).get("limits", {}).get("memory", 0))
            env = container_env(objects, spec, c)
            soft = env.get("GOMEMLIMIT")
            if soft is None:
                out.append(f"{ref(obj)} container {c['name']}: no GOMEMLIMIT (the Go heap grows into the OOM killer)")
                continue
            # Go writes MiB/GiB; the native DCGM library needs room above the Go heap.
            soft_bytes = parse_quantity(soft.replace("iB", "i").replace("B", ""))
            if not soft_bytes < 0.85 * limit:
                out.append(
                    f"{ref(obj)} container {c['name']}: GOMEMLIMIT {soft} must leave >= 15% of the {limit / 2**20:g}Mi "
                    "limit to native (libdcgm) memory"
                )
    return out


@policy("metrics-providers")
def check_metrics_providers(overlay: str, objects: list[Obj]) -> list[str]:
    """An HPA on External/Pods/Object metrics needs the overlay to declare their provider; DatadogMetrics must exist.

    Without a provider the HPA cannot read the metric; an HPA with a metric it cannot read never scales
    down, so GPU nodes would stay at their high-water mark.
    """
    out = []
    datadog_metrics = {
        f"{o['metadata'].get('namespace', '')}:{o['metadata']['name']}": o for o in find(objects, "DatadogMetric")
    }
    for hpa in find(objects, "HorizontalPodAutoscaler"):
        namespace = hpa["metadata"].get("namespace", "")
        declared = _namespace_annotations(objects, namespace)
        for metric in hpa["spec"].get("metrics", []):
            kind = metric.get("type")
            if kind not in METRIC_PROVIDERS:
                continue
            annotation, known = METRIC_PROVIDERS[kind]
            provider = declared.get(annotation)
            name = metric[kind[0].lower() + kind[1:]]["metric"]["name"]
            if provider is None:
                out.append(
                    f"{ref(hpa)}: reads {kind} metric {name} but Namespace/{namespace} declares no {annotation} "
                    "(the adapter the platform installs); without one the HPA can never scale down"
                )
            elif provider not in known:
                out.append(f"{ref(hpa)}: {annotation}={provider} is not one of {list(known)}")
            if kind == "External" and name.startswith(DATADOG_METRIC_PREFIX):
                if provider is not None and provider != "datadog-cluster-agent":
                    out.append(f"{ref(hpa)}: {name} is served by the Datadog Cluster Agent, not {provider}")
                wanted = name.removeprefix(DATADOG_METRIC_PREFIX)
                dm = datadog_metrics.get(wanted)
                if dm is None:
                    out.append(f"{ref(hpa)}: reads {name} but no DatadogMetric {wanted} is rendered")
                else:
                    out.extend(_datadog_metric_is_collected(objects, hpa, dm))
    return out


def _datadog_metric_is_collected(objects: list[Obj], hpa: Obj, dm: Obj) -> list[str]:
    """The scaled Deployment's pods carry the Datadog openmetrics check that sends the queried metric."""
    query = dm["spec"]["query"]
    match = re.search(r"([a-z_]+)\.([a-z0-9_]+)\{", query)
    if not match:
        return [f"{ref(dm)}: cannot read a <namespace>.<metric>{{...}} from query {query!r}"]
    prefix, metric = match.groups()
    deps = find(objects, "Deployment", hpa["spec"]["scaleTargetRef"]["name"])
    if not deps:
        return [f"{ref(hpa)}: scales a Deployment that is not rendered"]
    dep = deps[0]
    annotations = dep["spec"]["template"]["metadata"].get("annotations", {})
    for key, value in annotations.items():
        if key.startswith("ad.datadoghq.com/") and key.endswith(".checks") and '"openmetrics"' in value:
            instances = yaml.safe_load(value)["openmetrics"]["instances"]
            for inst in instances:
                if inst.get("namespace") == prefix and any(re.fullmatch(p, metric) for p in inst.get("metrics", [])):
                    return []
    return [
        f"{ref(dm)}: queries {prefix}.{metric}, but no Datadog openmetrics check on {ref(dep)} collects it "
        "(enable the monitoring component)"
    ]


def rendered_cluster_name(objects: list[Obj]) -> str | None:
    """The overlay's cluster name, as its node autoscaler's settings carry it (CLUSTER_NAME)."""
    for cm in find(objects, "ConfigMap"):
        if cm["metadata"]["name"].startswith(NODE_AUTOSCALER_SETTINGS):
            name = cm.get("data", {}).get("CLUSTER_NAME")
            return None if name is None else str(name)
    return None


def _query_tags(query: str) -> list[str]:
    """The tags of a Datadog query's scope: `sum:m{a:b,c:d}` -> ["a:b", "c:d"]."""
    match = re.search(r"\{([^}]*)\}", query)
    return [t.strip() for t in match.group(1).split(",")] if match else []


@policy("platform-contract")
def check_platform_contract(overlay: str, objects: list[Obj]) -> list[str]:
    """EKS: what the overlay needs from the platform's Datadog is what manifests/platform-contract.yaml promises.

    The Agent tolerates every node group's taints (else the GPU nodes send no metrics), no service outranks the
    Agent's priority (else the services preempt it), the Cluster Agent serves what the overlay reads, and every
    DatadogMetric query names this cluster (else staging and prod add up each other's values).
    """
    if not is_eks(overlay):
        return []
    contract, where = platform.load_contract(), platform.CONTRACT_PATH.name
    out = []
    for group in load_nodegroups().values():
        for taint in group.taints:
            if not tolerates(list(contract.agent_tolerations), taint):
                out.append(
                    f"{where}: the Datadog Agent does not tolerate {taint['key']}={taint.get('value', '')}:"
                    f"{taint['effect']} of node group {group.name}; its nodes would send no DCGM or queue-depth metrics"
                )
    priorities = {
        **BUILTIN_PRIORITIES,
        **{o["metadata"]["name"]: int(o["value"]) for o in find(objects, "PriorityClass")},
    }
    for name in SERVICES:
        for dep in find(objects, "Deployment", name):
            cls = dep["spec"]["template"]["spec"].get("priorityClassName")
            value = priorities.get(cls, 0) if cls else 0
            if value > contract.agent_priority:
                out.append(
                    f"{ref(dep)}: priority {value} ({cls}) exceeds the Datadog Agent's {contract.agent_priority} "
                    f"({contract.agent_priority_class}, {where}); its pods would preempt the Agent on a full node"
                )
    declared = _namespace_annotations(objects, SERVICE_NAMESPACE).get(EXTERNAL_METRICS_PROVIDER_ANNOTATION)
    if declared == "datadog-cluster-agent" and not contract.external_metrics_provider:
        out.append(
            f"Namespace/{SERVICE_NAMESPACE} declares {EXTERNAL_METRICS_PROVIDER_ANNOTATION}={declared}, but {where} "
            "does not promise the Cluster Agent's external metrics provider"
        )
    metrics = find(objects, "DatadogMetric")
    if metrics and not contract.datadog_metrics:
        out.append(f"{len(metrics)} DatadogMetrics rendered, but {where} does not promise DatadogMetric support")
    cluster = rendered_cluster_name(objects)
    for dm in metrics:
        if cluster is None:
            out.append(f"{ref(dm)}: no {NODE_AUTOSCALER_SETTINGS} CLUSTER_NAME rendered to scope its query by")
            continue
        wanted = f"{contract.cluster_tag}:{cluster}"
        if wanted not in _query_tags(dm["spec"]["query"]):
            out.append(
                f"{ref(dm)}: query {dm['spec']['query']!r} is not scoped to this cluster ({wanted}); every cluster "
                "reporting the same metric would be added up"
            )
    return out


def policy_violations(overlay: str, objects: list[Obj]) -> dict[str, list[str]]:
    """Every registered policy's violations for one overlay (empty lists when clean)."""
    return {name: fn(overlay, objects) for name, fn in POLICIES.items()}


# --------------------------------------------------------------------------------------------------
# Whole-overlay validation (what `invoke manifests.validate` runs)
# --------------------------------------------------------------------------------------------------


@dataclass
class OverlayReport:
    """Result of validating one overlay."""

    overlay: str
    objects: list[Obj] = field(default_factory=list)
    render_error: str | None = None
    schema_errors: list[str] = field(default_factory=list)
    policy_violations: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Rendered without warnings, schema-valid and policy-clean."""
        return self.render_error is None and not self.schema_errors and not any(self.policy_violations.values())


def validate_overlay(overlay: str, components: Iterable[str] = ()) -> OverlayReport:
    """Render one overlay (optionally with extra components) and run schema validation and every policy."""
    components = list(components)
    label = "+".join([overlay, *components])
    both = listed_node_autoscalers(overlay, components)
    if len(both) > 1:  # their settings share one name (NODE_AUTOSCALER_SETTINGS): kustomize could not render both
        return OverlayReport(label, policy_violations={"node-autoscaler": [both_autoscalers(both)]})
    try:
        objects = render_with_components(overlay, components) if components else render(overlay)
    except ManifestError as exc:
        return OverlayReport(label, render_error=str(exc))
    # The parity render is checked as what it is (its label names the component), so the policies apply
    # prod's rules except the documented parity differences.
    return check_objects(label if PARITY_COMPONENT in components else overlay, objects, label)


def check_objects(overlay: str, objects: list[Obj], label: str | None = None) -> OverlayReport:
    """Strict schemas and every policy over objects already rendered from `overlay` (deploy checks its YAML here)."""
    return OverlayReport(
        label or overlay,
        objects=objects,
        schema_errors=schema_errors(objects),
        policy_violations=policy_violations(overlay, objects),
    )


def print_reports(reports: list[OverlayReport], console: Any | None = None) -> None:
    """A rich table (one row per check, one column per overlay), then every error and violation."""
    from rich.table import Table

    console = console or core.out
    table = Table(title=f"Kustomize {kustomize_version()}, schemas of Kubernetes {schema_version()} (strict)")
    table.add_column("check", no_wrap=True)
    for r in reports:
        # "eks-prod+nvidia-device-plugin/time-slicing" -> "eks-prod\n+time-slicing"
        header = "\n+".join(part.rsplit("/", 1)[-1] for part in r.overlay.split("+"))
        table.add_column(header, justify="center", overflow="fold")

    def cell(count: int | None) -> str:
        return "-" if count is None else ("[green]ok[/]" if count == 0 else f"[red]{count}[/]")

    table.add_row("objects", *(str(len(r.objects)) for r in reports))
    table.add_row("render", *(cell(1 if r.render_error else 0) for r in reports))
    table.add_row("schema", *(cell(None if r.render_error else len(r.schema_errors)) for r in reports))
    for name in POLICIES:
        table.add_row(
            name, *(cell(None if r.render_error else len(r.policy_violations.get(name, []))) for r in reports)
        )
    console.print(table)
    for r in reports:
        if r.render_error:
            console.print(f"[red]{r.overlay}: render[/] {r.render_error}", highlight=False)
        for e in r.schema_errors:
            console.print(f"[red]{r.overlay}: schema[/] {e}", highlight=False)
        for name, violations in r.policy_violations.items():
            for v in violations:
                console.print(f"[red]{r.overlay}: {name}[/] {v}", highlight=False)
