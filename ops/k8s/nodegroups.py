"""The one typed reader of manifests/nodegroups.yaml: the production EKS managed node groups."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from ops.core import REPO_ROOT
from ops.k8s.objects import GPU_RESOURCE, parse_quantity

NODEGROUPS_PATH = REPO_ROOT / "manifests" / "nodegroups.yaml"
GPU_TAINT_KEY = "nvidia.com/gpu"
ACCELERATOR_LABEL = "k8s.amazonaws.com/accelerator"


@dataclass(frozen=True)
class NodeGroup:
    """One managed node group. The simulator makes fake nodes from it, the CDK app (ops.infra) creates it, the
    policies, placement, capacity planner and docs read it. Quantities stay as written (Kubernetes strings)."""

    name: str
    role: str
    instance_type: str
    min_size: int
    max_size: int
    zones: tuple[str, ...]
    capacity: dict[str, str]
    allocatable: dict[str, str]
    labels: dict[str, str]
    taints: tuple[dict[str, str], ...]
    # EKS managed node group AMI type (AL2023_x86_64_STANDARD | AL2023_x86_64_NVIDIA) and root volume size.
    ami_type: str = "AL2023_x86_64_STANDARD"
    disk_size_gib: int = 20

    def allocatable_amount(self, resource: str) -> float:
        """What a node offers pods of `resource` (cores, bytes, count); 0 when it has none."""
        return parse_quantity(self.allocatable.get(resource, "0"))

    @property
    def gpus_per_node(self) -> int:
        """nvidia.com/gpu each node offers (0 for CPU groups)."""
        return int(self.allocatable_amount(GPU_RESOURCE))


def load_nodegroups(path: Path = NODEGROUPS_PATH) -> dict[str, NodeGroup]:
    """The node groups, keyed by name, in file order."""
    data = yaml.safe_load(path.read_text())
    groups = {}
    for g in data["nodeGroups"]:
        group = NodeGroup(
            name=g["name"],
            role=g["role"],
            instance_type=g["instanceType"],
            min_size=int(g["minSize"]),
            max_size=int(g["maxSize"]),
            zones=tuple(g["zones"]),
            capacity={k: str(v) for k, v in g["capacity"].items()},
            allocatable={k: str(v) for k, v in g["allocatable"].items()},
            labels={k: str(v) for k, v in g["labels"].items()},
            taints=tuple({k: str(v) for k, v in t.items()} for t in g.get("taints") or ()),
            ami_type=str(g.get("amiType", "AL2023_x86_64_STANDARD")),
            disk_size_gib=int(g.get("diskSizeGiB", 20)),
        )
        groups[group.name] = group
    return groups
