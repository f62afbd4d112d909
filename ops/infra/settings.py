"""What each AWS environment is, read from the files the manifests already use (one source for each fact)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import yaml

from ops import core
from ops.core import REPO_ROOT, OpsError
from ops.images.versions import load_versions
from ops.k8s import karpenter, render
from ops.k8s.nodegroups import NodeGroup, load_nodegroups

OVERLAYS_DIR = REPO_ROOT / "overlays"
# env name (as `invoke deploy --env` spells it) -> the overlay that runs on that cluster: the EKS ones.
ENV_OVERLAYS = {env: overlay for env, overlay in render.ENV_OVERLAYS.items() if overlay in render.EKS_OVERLAYS}
# The images the overlays pull; one ECR repository each, shared by every environment of the account.
SERVICES = tuple(core.SERVICES)
# The Cluster Autoscaler's Kubernetes identity (manifests/components/cluster-autoscaler).
AUTOSCALER_NAMESPACE = "kube-system"
AUTOSCALER_SERVICE_ACCOUNT = "cluster-autoscaler"
# The account-wide stack (ECR), deployed with every environment.
REGISTRY_STACK = "eks-inference-registry"
# node_autoscaler (the components/<name> an overlay lists, exactly one) -> the overlay patch naming its cluster.
NODE_AUTOSCALER_SETTINGS = {
    "cluster-autoscaler": "cluster_autoscaler_settings_patch.yaml",
    karpenter.CONTROLLER: "karpenter_settings_patch.yaml",
}


class InfraError(OpsError):
    """The overlays and the infrastructure disagree, or an environment is unknown."""


@dataclass(frozen=True)
class Environment:
    """One EKS environment: names and ids the overlay expects, plus the shape of its network."""

    name: str
    overlay: str
    account: str
    region: str
    cluster_name: str
    autoscaler_role_name: str
    ecr_repositories: tuple[str, ...]
    # NAT gateways: one per zone in prod (a zone outage keeps egress), one in staging (cost).
    nat_gateways: int
    # cluster-autoscaler | karpenter: the node autoscaler the overlay lists; the stack creates what it needs.
    node_autoscaler: str = "cluster-autoscaler"
    # Karpenter's SQS interruption queue (its settings patch names it); None with the Cluster Autoscaler.
    interruption_queue: str | None = None

    @property
    def stack_name(self) -> str:
        return f"{self.cluster_name}-cluster"


@cache
def versions() -> dict[str, Any]:
    """base-images/versions.toml: Kubernetes minor, GPU AMI release."""
    return load_versions()


def nodegroups() -> list[NodeGroup]:
    """The managed node groups of manifests/nodegroups.yaml, in file order."""
    return list(load_nodegroups().values())


def _overlay_doc(overlay: str, filename: str) -> dict[str, Any]:
    path = OVERLAYS_DIR / overlay / filename
    if not path.is_file():
        raise InfraError(f"{path} is missing: the infrastructure reads its names from the overlay")
    return dict(yaml.safe_load(path.read_text()))


def node_autoscaler(kustomization: dict[str, Any], overlay: str) -> str:
    """The node autoscaler an overlay's kustomization lists among its components (exactly one)."""
    listed = [c.rstrip("/").rsplit("/", 1)[-1] for c in kustomization.get("components", [])]
    chosen = [name for name in NODE_AUTOSCALER_SETTINGS if name in listed]
    if len(chosen) != 1:
        raise InfraError(
            f"{overlay}: lists {chosen or 'no node autoscaler'}; list exactly one of "
            + ", ".join(f"components/{n}" for n in NODE_AUTOSCALER_SETTINGS)
        )
    return chosen[0]


def environment(name: str) -> Environment:
    """The environment `name` (staging | prod), with the names its overlay already uses.

    Node autoscaler: the component the overlay lists (cluster-autoscaler | karpenter). Cluster name and region (and
    Karpenter's interruption queue): that autoscaler's settings patch. Account and ECR repositories: the
    overlay's images table (<account>.dkr.ecr.<region>.amazonaws.com/<repository>).
    """
    if name not in ENV_OVERLAYS:
        raise InfraError(f"unknown env {name!r}; expected one of {', '.join(ENV_OVERLAYS)}")
    overlay = ENV_OVERLAYS[name]
    kustomization = _overlay_doc(overlay, "kustomization.yaml")
    autoscaler = node_autoscaler(kustomization, overlay)
    settings = _overlay_doc(overlay, NODE_AUTOSCALER_SETTINGS[autoscaler])["data"]
    accounts, repositories = set(), []
    for image in kustomization.get("images", []):
        registry, _, repository = image["newName"].partition("/")
        account, _, host = registry.partition(".")
        if host != f"dkr.ecr.{settings['AWS_REGION']}.amazonaws.com":
            raise InfraError(f"{overlay}: image {image['newName']} is not in ECR of {settings['AWS_REGION']}")
        accounts.add(account)
        repositories.append(repository)
    if len(accounts) != 1:
        raise InfraError(f"{overlay}: images come from {len(accounts)} accounts, expected one")
    (account,) = accounts
    return Environment(
        name=name,
        overlay=overlay,
        account=account,
        region=str(settings["AWS_REGION"]),
        cluster_name=str(settings["CLUSTER_NAME"]),
        autoscaler_role_name=f"{settings['CLUSTER_NAME']}-cluster-autoscaler",
        ecr_repositories=tuple(sorted(repositories)),
        nat_gateways=3 if name == "prod" else 1,
        node_autoscaler=autoscaler,
        interruption_queue=str(settings["INTERRUPTION_QUEUE"]) if autoscaler == karpenter.CONTROLLER else None,
    )
