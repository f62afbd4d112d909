"""Who may reach each EKS cluster: the deploy role's access policy, derived from what `invoke deploy` applies."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ops.k8s.objects import Obj

# EKS access policies, narrowest first (docs.aws.amazon.com/eks/latest/userguide/access-policy-permissions.html;
# they mirror Kubernetes' user-facing roles). AmazonEKSAdminPolicy ~ `admin` (namespaced objects and their
# Roles/RoleBindings); AmazonEKSClusterAdminPolicy ~ `cluster-admin`.
NAMESPACED_ADMIN_POLICY = "AmazonEKSAdminPolicy"
CLUSTER_ADMIN_POLICY = "AmazonEKSClusterAdminPolicy"
# Kinds without a namespace, as the overlays render them. No EKS access policy narrower than cluster admin
# may create any of these, and creating a ClusterRole needs every permission it grants (RBAC escalation
# prevention), so an overlay that applies one needs a cluster-admin deployer.
CLUSTER_SCOPED_KINDS = (
    "Namespace",
    "PriorityClass",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "StorageClass",
    "APIService",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
)
# The access entries' principals are CloudFormation parameters of the cluster stack, filled in by
# `invoke infra.deploy` from infra.access.<env> in invoke.yaml; the template names no ARN.
ADMIN_ROLE_PARAMETER = "AdminRoleArn"
DEPLOY_ROLE_PARAMETER = "DeployRoleArn"
ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::(\d{12}):role/.+$")
ACCESS_ROLES = ("admin_role_arn", "deploy_role_arn")


@dataclass(frozen=True)
class Grant:
    """The EKS access policy a principal needs, and where (the namespaces, unless cluster-wide)."""

    policy: str
    cluster_scope: bool
    namespaces: tuple[str, ...]
    # Why cluster scope: the cluster-scoped kinds the overlay applies.
    cluster_kinds: tuple[str, ...] = ()


def deploy_access(objects: list[Obj]) -> Grant:
    """The narrowest EKS access policy under which `invoke deploy` can apply `objects` (a rendered overlay)."""
    namespaces = sorted({o["metadata"]["namespace"] for o in objects if o["metadata"].get("namespace")})
    cluster_kinds = sorted({o["kind"] for o in objects if o["kind"] in CLUSTER_SCOPED_KINDS})
    if cluster_kinds:
        return Grant(CLUSTER_ADMIN_POLICY, True, tuple(namespaces), tuple(cluster_kinds))
    return Grant(NAMESPACED_ADMIN_POLICY, False, tuple(namespaces))


class AccessNotConfigured(ValueError):
    """infra.access.<env> lacks a role ARN, or names one of another account."""


def access_roles(env: str, conf: Mapping[str, object], account: str) -> dict[str, str]:
    """{admin_role_arn, deploy_role_arn} of `env` from invoke.yaml's infra.access; refuses unset or foreign ARNs."""
    section = conf.get(env) or {}
    if not isinstance(section, Mapping):
        raise AccessNotConfigured(f"infra.access.{env} must be a mapping with {' and '.join(ACCESS_ROLES)}")
    roles = {}
    for key in ACCESS_ROLES:
        arn = str(section.get(key) or "").strip()
        if not arn:
            raise AccessNotConfigured(
                f"infra.access.{env}.{key} is not set (INVOKE_INFRA_ACCESS_{env.upper()}_{key.upper()}): "
                "without it nobody could reach the cluster; the stack names no principal of its own"
            )
        match = ROLE_ARN.match(arn)
        if match is None:
            raise AccessNotConfigured(f"infra.access.{env}.{key} {arn!r} is not an IAM role ARN")
        if match.group(1) != account:
            raise AccessNotConfigured(
                f"infra.access.{env}.{key} {arn!r} is in account {match.group(1)}, the stack in {account}"
            )
        roles[key] = arn
    return roles
