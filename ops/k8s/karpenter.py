"""Karpenter, the other node autoscaler: its NodePools and EC2NodeClasses generated from nodegroups.yaml, their
placement view for the policies, its CRD schemas (read from the release's Go module), and the kwok instance types
of the simulated cluster.

manifests/components/karpenter holds skeletons (how each pool scales and is disrupted); `generate` fills in, when an
overlay renders (ops.k8s.render.derive), everything manifests/nodegroups.yaml already says: labels, taints, the
instance families, GPUs per node, zones, on-demand, the limits, the AMI and the disk. No pool restates a node group.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from ops import core
from ops.images.versions import load_versions
from ops.k8s.nodegroups import NODEGROUP_LABEL, ZONE_LABEL, NodeGroup, load_nodegroups
from ops.k8s.objects import GPU_RESOURCE, NODE_AUTOSCALER_SETTINGS, Obj, find, parse_quantity

CONTROLLER = "karpenter"  # the Deployment and ServiceAccount (kube-system), the IAM role's suffix
NAMESPACE = "kube-system"
CONTROLLER_IMAGE = "public.ecr.aws/karpenter/controller"
# The nodegroups.yaml entry a NodePool or EC2NodeClass skeleton is generated from.
NODEGROUP_ANNOTATION = "eks-inference.io/nodegroup"
NODEPOOL_LABEL = "karpenter.sh/nodepool"
CAPACITY_TYPE_LABEL = "karpenter.sh/capacity-type"
ON_DEMAND = "on-demand"
INSTANCE_FAMILY_LABEL = "karpenter.k8s.aws/instance-family"
INSTANCE_GPU_COUNT_LABEL = "karpenter.k8s.aws/instance-gpu-count"
# The tag Karpenter finds this cluster's subnets and security groups by (the CDK stack sets it).
DISCOVERY_TAG = "karpenter.sh/discovery"
# nodegroups.yaml labels a NodePool leaves out: EKS sets the first on managed node groups only (a Karpenter node is
# in none), the provider sets the second from the instance it launched.
NOT_POOL_LABELS = (NODEGROUP_LABEL, "node.kubernetes.io/instance-type")
ARCH = "amd64"
# nodegroups.yaml amiType -> the AL2023 variant in the EKS AMI's name.
AMI_VARIANTS = {"AL2023_x86_64_STANDARD": "standard", "AL2023_x86_64_NVIDIA": "nvidia"}
# Where the CRDs of the pinned release are: the karpenter-provider-aws module (NodePool with the AWS labels, and
# EC2NodeClass), fetched through the Go module proxy into the toolchain's module cache.
PROVIDER_MODULE = "github.com/aws/karpenter-provider-aws"
CORE_MODULE = "sigs.k8s.io/karpenter"
CRD_FILES = {
    ("karpenter.sh/v1", "NodePool"): "karpenter.sh_nodepools.yaml",
    ("karpenter.k8s.aws/v1", "EC2NodeClass"): "karpenter.k8s.aws_ec2nodeclasses.yaml",
}


class KarpenterError(ValueError):
    """A NodePool or EC2NodeClass cannot be generated from the overlay and nodegroups.yaml."""


def version() -> str:
    """The pinned Karpenter release (base-images/versions.toml [addons].karpenter), as the image tags it: 1.15.0."""
    return str(load_versions()["addons"]["karpenter"])


def node_role_name(cluster: str) -> str:
    """The IAM role of the nodes Karpenter launches (created by the CDK stack, named in every EC2NodeClass)."""
    return f"{cluster}-karpenter-node"


def controller_role_name(cluster: str) -> str:
    """The controller's IAM role (EKS Pod Identity, kube-system/karpenter)."""
    return f"{cluster}-{CONTROLLER}"


def settings(objects: list[Obj]) -> dict[str, str] | None:
    """The rendered node-autoscaler-settings data (CLUSTER_NAME, AWS_REGION, INTERRUPTION_QUEUE), or None."""
    for cm in find(objects, "ConfigMap"):
        if cm["metadata"]["name"].startswith(NODE_AUTOSCALER_SETTINGS) and cm["metadata"].get("namespace") == NAMESPACE:
            return {str(k): str(v) for k, v in (cm.get("data") or {}).items()}
    return None


def pool_labels(group: NodeGroup) -> dict[str, str]:
    """The labels every node of the entry's NodePool carries (the contract workloads select on)."""
    return {k: v for k, v in group.labels.items() if k not in NOT_POOL_LABELS}


def requirements(group: NodeGroup) -> list[Obj]:
    """What the entry's NodePool may launch: its instance families (with the entry's GPUs per node), on-demand,
    amd64 Linux, in the entry's zones."""
    out: list[Obj] = [
        {"key": INSTANCE_FAMILY_LABEL, "operator": "In", "values": list(group.families)},
        {"key": CAPACITY_TYPE_LABEL, "operator": "In", "values": [ON_DEMAND]},
        {"key": "kubernetes.io/arch", "operator": "In", "values": [ARCH]},
        {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
        {"key": ZONE_LABEL, "operator": "In", "values": list(group.zones)},
    ]
    if group.gpus_per_node:
        out.insert(1, {"key": INSTANCE_GPU_COUNT_LABEL, "operator": "In", "values": [str(group.gpus_per_node)]})
    return out


def limits(group: NodeGroup) -> dict[str, str]:
    """The most the NodePool may launch: a GPU entry's GPUs at its maxSize (every zone); a CPU entry's cores above
    its managed floor (the managed node group stays at minSize and hosts the controller)."""
    if group.gpus_per_node:
        return {GPU_RESOURCE: str(group.total_max_size * group.gpus_per_node)}
    cores = parse_quantity(group.capacity["cpu"])
    return {"cpu": f"{(group.total_max_size - group.total_min_size) * cores:g}"}


def ami_selector(group: NodeGroup) -> list[Obj]:
    """The pinned EKS AL2023 AMI of the entry's variant ([eks].gpu_ami_release), by its name as EKS publishes it:
    the NVIDIA variant (driver + container toolkit) for GPU entries, the standard one otherwise."""
    variant = AMI_VARIANTS.get(group.ami_type)
    if variant is None:
        raise KarpenterError(f"node group {group.name}: amiType {group.ami_type} is not an AL2023 x86_64 type")
    release = load_versions()["eks"]["gpu_ami_release"]
    return [{"name": f"amazon-eks-node-al2023-x86_64-{variant}-{release}", "owner": "amazon"}]


def _entry(obj: Obj, groups: dict[str, NodeGroup]) -> NodeGroup:
    name = (obj["metadata"].get("annotations") or {}).get(NODEGROUP_ANNOTATION)
    if name not in groups:
        raise KarpenterError(
            f"{obj['kind']}/{obj['metadata']['name']}: annotation {NODEGROUP_ANNOTATION}={name!r} names no entry of "
            f"nodegroups.yaml ({', '.join(groups)})"
        )
    return groups[str(name)]


def generate(objects: list[Obj], groups: dict[str, NodeGroup] | None = None) -> bool:
    """Fill the NodePool and EC2NodeClass skeletons from nodegroups.yaml, in place; whether there were any."""
    pools, classes = find(objects, "NodePool"), find(objects, "EC2NodeClass")
    if not pools and not classes:
        return False
    groups = load_nodegroups() if groups is None else groups
    for obj in (*pools, *classes):
        # Cluster-scoped; Kustomize does not know these kinds and gives them the overlay's namespace.
        obj["metadata"].pop("namespace", None)
    for pool in pools:
        group = _entry(pool, groups)
        template = pool["spec"].setdefault("template", {})
        template.setdefault("metadata", {})["labels"] = pool_labels(group)
        spec = template.setdefault("spec", {})
        spec["requirements"] = requirements(group)
        if group.taints:
            spec["taints"] = [dict(t) for t in group.taints]
        pool["spec"]["limits"] = limits(group)
    if classes:
        cluster = (settings(objects) or {}).get("CLUSTER_NAME")
        if not cluster:
            raise KarpenterError(f"EC2NodeClasses rendered without a {NODE_AUTOSCALER_SETTINGS} CLUSTER_NAME")
        for node_class in classes:
            group = _entry(node_class, groups)
            spec = node_class["spec"]
            spec["amiSelectorTerms"] = ami_selector(group)
            spec["role"] = node_role_name(cluster)
            spec["subnetSelectorTerms"] = [{"tags": {DISCOVERY_TAG: cluster}}]
            spec["securityGroupSelectorTerms"] = [{"tags": {DISCOVERY_TAG: cluster}}]
            spec["blockDeviceMappings"] = [
                {
                    "deviceName": "/dev/xvda",
                    "ebs": {
                        "volumeSize": f"{group.disk_size_gib}Gi",
                        "volumeType": "gp3",
                        "encrypted": True,
                        "deleteOnTermination": True,
                    },
                }
            ]
            spec["tags"] = {DISCOVERY_TAG: cluster, "eks-inference.io/nodegroup": group.name}
    return True


def pool_groups(objects: list[Obj], groups: dict[str, NodeGroup] | None = None) -> dict[str, NodeGroup]:
    """NodePool name -> what a node it launches looks like to the scheduler, as a NodeGroup (for ops.k8s.placement):
    the template's labels plus the labels its single-valued requirements and Karpenter set, its taints, and the
    allocatable of its nodegroups.yaml entry."""
    groups = load_nodegroups() if groups is None else groups
    out = {}
    for pool in find(objects, "NodePool"):
        entry = _entry(pool, groups)
        template = pool["spec"].get("template", {})
        labels = dict(template.get("metadata", {}).get("labels") or {})
        for req in template.get("spec", {}).get("requirements") or []:
            if req.get("operator") == "In" and len(req.get("values") or []) == 1:
                labels[req["key"]] = str(req["values"][0])
        labels[NODEPOOL_LABEL] = pool["metadata"]["name"]
        out[pool["metadata"]["name"]] = NodeGroup(
            name=pool["metadata"]["name"],
            role=entry.role,
            instance_type=entry.instance_type,
            min_size=0,
            max_size=entry.total_max_size,
            zones=entry.zones,
            capacity=dict(entry.capacity),
            allocatable=dict(entry.allocatable),
            labels=labels,
            taints=tuple(dict(t) for t in template.get("spec", {}).get("taints") or ()),
            ami_type=entry.ami_type,
            disk_size_gib=entry.disk_size_gib,
            instance_families=entry.families,
        )
    return out


# --- the release's CRDs (schemas for manifests.validate, objects for the simulated cluster) --------------------


def module_dir(module: str, release: str) -> Path:
    """The module at `release` (v-prefixed) in the toolchain's Go module cache, downloaded through the proxy once."""
    from ops.toolchain import tools

    env = tools.go_env(toolchain=_toolchain())
    path = Path(env["GOMODCACHE"]) / f"{module}@{release}"
    if not path.is_dir():
        with tools.locked(f"module-{module.replace('/', '_')}"):
            if not path.is_dir():
                core.run([tools.go_binary(), "mod", "download", f"{module}@{release}"], env=env, timeout=600,
                         effect=False)  # fmt: skip
    return path


def _toolchain() -> str | None:
    """The Go toolchain the karpenter-kwok build uses (the modules' go.mod needs a newer Go than the machine's)."""
    from ops.toolchain import tools

    build = tools.load_manifest().tools["karpenter-kwok"].build
    return build.toolchain if build else None


def provider_crds() -> dict[tuple[str, str], Obj]:
    """(apiVersion, kind) -> the CustomResourceDefinition of the pinned release, from karpenter-provider-aws."""
    crds = module_dir(PROVIDER_MODULE, f"v{version()}") / "pkg" / "apis" / "crds"
    return {key: yaml.safe_load((crds / name).read_text()) for key, name in CRD_FILES.items()}


def crd_schema(crd: Obj) -> Obj:
    """The JSON schema of a CRD's served version, strict: no field that the CRD does not declare (Kubernetes would
    prune it silently)."""
    version_ = next(v for v in crd["spec"]["versions"] if v.get("served"))
    schema = copy.deepcopy(version_["schema"]["openAPIV3Schema"])
    _strict(schema)
    schema.setdefault("properties", {})["metadata"] = {"type": "object", "required": ["name"]}
    return dict(schema)


def _strict(node: Any) -> None:
    if isinstance(node, dict):
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        if node.get("x-kubernetes-int-or-string"):
            node.pop("type", None)
            node.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
        for value in node.values():
            _strict(value)
    elif isinstance(node, list):
        for value in node:
            _strict(value)


def kwok_crds() -> list[Obj]:
    """The CRDs the kwok build of Karpenter needs on the simulated cluster: karpenter.sh (core, kwok/charts/crds)
    and KWOKNodeClass (kwok/apis/crds), from the pinned core module."""
    from ops.toolchain import tools

    core_dir = module_dir(CORE_MODULE, tools.load_manifest().tools["karpenter-kwok"].version)
    paths = sorted((core_dir / "kwok" / "charts" / "crds").glob("*.yaml"))
    paths += sorted((core_dir / "kwok" / "apis" / "crds").glob("*.yaml"))
    return [doc for p in paths for doc in yaml.safe_load_all(p.read_text()) if doc]


# --- the simulated cluster ----------------------------------------------------------------------------------------


def kwok_instance_types(groups: dict[str, NodeGroup] | None = None) -> str:
    """The instance types the kwok provider offers (its INSTANCE_TYPES_FILE_PATH JSON), from nodegroups.yaml: for each
    entry and each of its families, an `<family>.<size>` with the entry's capacity, on-demand in each of its zones,
    carrying the AWS provider's family and GPU-count labels so the generated NodePools select them as on EKS."""
    groups = load_nodegroups() if groups is None else groups
    out = []
    for group in groups.values():
        size = group.instance_type.split(".", 1)[1]
        for family in group.families:
            extra = [{"key": INSTANCE_FAMILY_LABEL, "operator": "In", "values": [family]}]
            if group.gpus_per_node:
                extra.append({"key": INSTANCE_GPU_COUNT_LABEL, "operator": "In", "values": [str(group.gpus_per_node)]})
            out.append(
                {
                    "name": f"{family}.{size}",
                    "architecture": ARCH,
                    "operatingSystems": ["linux"],
                    "resources": dict(group.capacity),
                    "offerings": [
                        {
                            "Price": 1.0,
                            "Available": True,
                            "Requirements": [
                                {"key": ZONE_LABEL, "operator": "In", "values": [zone]},
                                {"key": CAPACITY_TYPE_LABEL, "operator": "In", "values": [ON_DEMAND]},
                                *extra,
                            ],
                        }
                        for zone in group.zones
                    ],
                }
            )
    return json.dumps(out, indent=2)


KWOK_NODECLASS_GROUP = "karpenter.kwok.sh"
KWOK_NODECLASS_KIND = "KWOKNodeClass"


def sim_objects(rendered: list[Obj]) -> list[Obj]:
    """The rendered NodePools as the kwok build of Karpenter takes them, and a KWOKNodeClass for each: the same
    objects, with only nodeClassRef moved from the EC2NodeClass to a KWOKNodeClass of the same name."""
    out: list[Obj] = []
    for pool in find(rendered, "NodePool"):
        pool = copy.deepcopy(pool)
        ref_ = pool["spec"]["template"]["spec"]["nodeClassRef"]
        ref_.update(group=KWOK_NODECLASS_GROUP, kind=KWOK_NODECLASS_KIND)
        out.append(pool)
    for name in sorted({p["spec"]["template"]["spec"]["nodeClassRef"]["name"] for p in out}):
        out.append(
            {"apiVersion": f"{KWOK_NODECLASS_GROUP}/v1alpha1", "kind": KWOK_NODECLASS_KIND, "metadata": {"name": name}}
        )
    return out


def controller_env(rendered: list[Obj]) -> dict[str, str]:
    """The literal settings of the rendered controller Deployment (feature gates, batching, log level, ...), what a
    local run of the controller takes from the manifest rather than restating."""
    (dep,) = find(rendered, "Deployment", CONTROLLER)
    container = next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == CONTROLLER)
    return {str(e["name"]): str(e["value"]) for e in container.get("env", []) if "value" in e}
