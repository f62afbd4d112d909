"""The one typed reader of manifests/nodegroups.yaml: the production EKS managed node groups."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from ops.core import REPO_ROOT
from ops.k8s.objects import GPU_RESOURCE, parse_quantity

NODEGROUPS_PATH = REPO_ROOT / "manifests" / "nodegroups.yaml"
GPU_TAINT_KEY = "nvidia.com/gpu"
ACCELERATOR_LABEL = "k8s.amazonaws.com/accelerator"
# The label EKS puts on every node of a managed node group: the managed node group's name.
NODEGROUP_LABEL = "eks.amazonaws.com/nodegroup"
ZONE_LABEL = "topology.kubernetes.io/zone"


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
    # perZone: one EKS managed node group per zone, each with this entry's minSize/maxSize, so the Cluster
    # Autoscaler can choose the zone a new node lands in (--balance-similar-node-groups; a zone-spread pod
    # that is pending in one zone scales that zone's group). False: one group spanning every zone.
    per_zone: bool = False
    # The entry of nodegroups.yaml a per-zone managed group was expanded from (empty for the entries themselves).
    family: str = ""
    # EC2 instance families Karpenter's NodePool for this entry may launch (instanceFamilies; default: the family of
    # instanceType). The managed node groups keep instanceType alone.
    instance_families: tuple[str, ...] = ()

    @property
    def families(self) -> tuple[str, ...]:
        """The instance families of the entry's NodePool: instanceFamilies, else instanceType's own."""
        return self.instance_families or (self.instance_type.split(".", 1)[0],)

    @property
    def entry(self) -> str:
        """The name of the nodegroups.yaml entry this group is (or was expanded from)."""
        return self.family or self.name

    def managed(self) -> tuple[NodeGroup, ...]:
        """The EKS managed node groups this entry becomes: itself, or one per zone (`<name>-<zone>`)."""
        if not self.per_zone:
            return (self,)
        return tuple(
            replace(
                self,
                name=f"{self.name}-{zone}",
                zones=(zone,),
                labels={**self.labels, NODEGROUP_LABEL: f"{self.name}-{zone}"} if NODEGROUP_LABEL in self.labels
                else dict(self.labels),
                per_zone=False,
                family=self.name,
            )
            for zone in self.zones
        )  # fmt: skip

    @property
    def total_min_size(self) -> int:
        """Nodes the entry keeps at least, over all its managed groups."""
        return sum(g.min_size for g in self.managed())

    @property
    def total_max_size(self) -> int:
        """Nodes the entry may grow to, over all its managed groups."""
        return sum(g.max_size for g in self.managed())

    def zone_max_sizes(self) -> dict[str, int]:
        """zone -> the most nodes the entry may have there (a multi-zone group could put them all in one zone)."""
        if self.per_zone:
            return {g.zones[0]: g.max_size for g in self.managed()}
        return dict.fromkeys(self.zones, self.max_size)

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
            per_zone=bool(g.get("perZone", False)),
            instance_families=tuple(str(f) for f in g.get("instanceFamilies") or ()),
        )
        groups[group.name] = group
    return groups


def managed_nodegroups(path: Path = NODEGROUPS_PATH) -> dict[str, NodeGroup]:
    """The EKS managed node groups, keyed by name: every entry, per-zone entries expanded (what infra/ creates)."""
    return {m.name: m for group in load_nodegroups(path).values() for m in group.managed()}
