"""The parity cluster of `invoke up --parity` (issue 19): eks-prod itself on a multi-node kind cluster.

The nodes are generated from manifests/nodegroups.yaml (ops.k8s.kind.parity_config, counts in kind/parity.yaml);
the add-ons are manifests/cluster-addons.yaml's kind entries, kube-router's firewall among them, so the
NetworkPolicies are enforced; the workloads are `eks-prod` rendered with components/kind-parity through
ops.k8s.render and checked by every policy before anything is applied, then applied as `invoke deploy` applies
(server-side, the replicas handed over to the HPAs). The service images are the CPU builds `invoke up` makes,
each `kind load`ed only onto the nodes of the node groups its pods can be scheduled on (ops.k8s.placement), so
the ~6 GB images are copied to as few nodes as production would pull them on.

What cannot run without a GPU or a registry (the NVIDIA device plugin and DCGM exporter, whose images are
NVIDIA's, and the Cluster Autoscaler, which has no cloud to call) is applied all the same: it is placed by
prod's rules and stays ImagePullBackOff there. `up` waits for the services only. In the device plugin's place,
each gpu-t4 node advertises its node group's GPU (advertise_devices), so the image pods keep prod's GPU request.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from ops import core
from ops.k8s import deploy, kind, nodegroups, placement, policies, render
from ops.k8s.objects import GPU_RESOURCE, Obj

OVERLAY = "eks-prod"
COMPONENTS = (render.PARITY_COMPONENT,)
LABEL = "+".join([OVERLAY, *COMPONENTS])  # how the policies and reports name the render
NODEGROUP_LABEL = "eks.amazonaws.com/nodegroup"
NAMESPACE = kind.NAMESPACE


class ParityError(kind.KindError):
    """The parity render fails a check, or the cluster does not come up as production would."""


def cluster_name() -> str:
    return kind.cluster_name(kind.PARITY_CONFIG)


def render_objects() -> list[Obj]:
    """eks-prod + components/kind-parity, rendered by ops.k8s.render."""
    return render.render_with_components(OVERLAY, COMPONENTS)


def checked_render() -> list[Obj]:
    """The parity render, refused (nothing applied) when it fails the strict schemas or a policy."""
    objects = render_objects()
    report = policies.check_objects(LABEL, objects)
    if not report.ok:
        problems = [*report.schema_errors, *(f"{n}: {v}" for n, vs in report.policy_violations.items() for v in vs)]
        raise ParityError(f"{LABEL} fails validation; nothing applied:\n  " + "\n  ".join(problems))
    return objects


def service_node_groups(objects: list[Obj]) -> dict[str, list[str]]:
    """Service name -> the node groups its pods can be scheduled on (prod's rules, ops.k8s.placement)."""
    where = placement.placement(objects, nodegroups.load_nodegroups().values())
    return {name: where[f"Deployment/{name}"] for name in core.SERVICES}


def nodes_by_group(kubectl: deploy.Kubectl) -> dict[str, list[str]]:
    """Node group -> the names of the kind nodes labelled as its nodes."""
    out: dict[str, list[str]] = {}
    for node in yaml.safe_load(kubectl.run("get", "nodes", "-o", "yaml", quiet=True).stdout)["items"]:
        group = node["metadata"]["labels"].get(NODEGROUP_LABEL, "")
        out.setdefault(group, []).append(node["metadata"]["name"])
    return out


def advertise_devices(kubectl: deploy.Kubectl, timeout_s: float = 120) -> dict[str, dict[str, str]]:
    """Each kind node advertises its node group's device resources (nodegroups.yaml capacity: nvidia.com/gpu),
    as the NVIDIA device plugin does on a GPU node; the plugin has no GPU here, so its stand-in is a patch of the
    node's status capacity (an extended resource: the kubelet derives the allocatable and keeps it). The GPU pods
    then request prod's 1 GPU and schedule by prod's rule: one per node, the next Pending for a node."""
    groups = nodegroups.load_nodegroups()
    wanted: dict[str, dict[str, str]] = {}
    for group, names in nodes_by_group(kubectl).items():
        devices = {r: q for r, q in groups[group].capacity.items() if r == GPU_RESOURCE} if group in groups else {}
        for node in names:
            if devices:
                ops = [{"op": "add", "path": f"/status/capacity/{r.replace('/', '~1')}", "value": q}
                       for r, q in devices.items()]  # fmt: skip
                kubectl.run("patch", "node", node, "--subresource=status", "--type=json", "-p", json.dumps(ops))
                wanted[node] = devices
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = yaml.safe_load(kubectl.run("get", "nodes", "-o", "yaml", quiet=True).stdout)["items"]
        allocatable = {n["metadata"]["name"]: n["status"].get("allocatable", {}) for n in nodes}
        if all(allocatable.get(n, {}).get(r) == q for n, d in wanted.items() for r, q in d.items()):
            return wanted
        if time.monotonic() > deadline:
            raise ParityError(f"the nodes do not advertise {wanted} within {timeout_s:.0f}s: {allocatable}")
        time.sleep(2)


def build_and_load(k: kind.Kind, result: kind.UpResult, objects: list[Obj], *, offline: bool) -> dict[str, str]:
    """The services' CPU images (the builds `invoke up` makes), each loaded onto the nodes it can run on."""
    from ops.images import build as image_build

    kubectl = deploy.Kubectl(k.context, k.kubeconfig)
    groups = service_node_groups(objects)
    by_group = nodes_by_group(kubectl)
    refs: dict[str, str] = {}
    with result.step("images build"):
        built = {
            name: kind.content_tag(image_build.build_service(name, "cpu", offline=offline).image) for name in groups
        }
    with result.step("kind load"):
        for name, ref in built.items():
            nodes = sorted({n for g in groups[name] for n in by_group.get(g, [])})
            if not nodes:
                raise ParityError(f"no parity node can run {name} (node groups {groups[name]}): see kind/parity.yaml")
            for node in nodes:  # one node at a time: the disk holds one archive more than the snapshots at most
                k.load([ref], nodes=[node])
                k.drop_layer_archives(ref, [node])
            refs[core.SERVICES[name].repository] = ref
    result.images = refs
    return refs


def apply(kubectl: deploy.Kubectl, objects: list[Obj], overrides: Mapping[str, str], timeout_s: int) -> None:
    """Apply the checked render as `invoke deploy` does, then wait for the services' rollouts."""
    rendered = deploy.set_images(yaml.safe_dump_all(objects, sort_keys=False), overrides)
    common = ["--server-side", f"--field-manager={deploy.FIELD_MANAGER}", "--force-conflicts"]
    targets = deploy.hpa_targets(rendered)
    deploy.hand_over_replicas(kubectl, targets)
    for part in deploy.split_first(rendered):
        if part.strip():
            kubectl.run("apply", *common, "-f", "-", input_text=part)
    deploy.wait_for_hpa_floor(kubectl, targets, timeout_s)
    for name in core.SERVICES:
        wait = f"--timeout={timeout_s}s"
        kubectl.run("-n", NAMESPACE, "rollout", "status", f"deployment/{name}", wait, timeout=timeout_s + 30)


def up(
    k: kind.Kind,
    *,
    mode: kind.NodeImageMode = "auto",
    extra: Mapping[str, Any] | None = None,
    offline_images: bool | None = None,
    timeout_s: int = deploy.ROLLOUT_TIMEOUT_S * 2,
) -> kind.UpResult:
    """Create (or reuse) the parity cluster, install the add-ons, load the images, apply eks-prod + kind-parity."""
    objects = checked_render()  # before anything is created: a failing render costs nothing
    result = kind.UpResult(context=k.context)
    started = time.monotonic()
    kind.ensure_cluster(k, result, mode=mode, extra=extra, base=kind.parity_config())
    if offline_images is None:
        offline_images = result.node_image.offline if result.node_image is not None else not kind.registry_answers()
    kubectl = deploy.Kubectl(k.context, k.kubeconfig)
    with result.step("node devices"):
        advertise_devices(kubectl)
    kind.ensure_bundles()
    overrides = build_and_load(k, result, objects, offline=offline_images)
    with result.step(f"apply {LABEL}"):
        apply(kubectl, objects, overrides, timeout_s)
    result.steps.append(("total", time.monotonic() - started))
    return result


def pod_rows(kubectl: deploy.Kubectl, namespaces: Sequence[str] = (NAMESPACE, "kube-system")) -> list[tuple[str, ...]]:
    """(namespace, pod, node, node group, phase) of every pod in `namespaces`, for the placement table."""
    groups = {n: g for g, names in nodes_by_group(kubectl).items() for n in names}
    rows: list[tuple[str, ...]] = []
    for ns in namespaces:
        for pod in yaml.safe_load(kubectl.run("-n", ns, "get", "pods", "-o", "yaml", quiet=True).stdout)["items"]:
            node = pod["spec"].get("nodeName", "")
            rows.append((ns, pod["metadata"]["name"], node, groups.get(node, ""), pod["status"].get("phase", "")))
    return rows
