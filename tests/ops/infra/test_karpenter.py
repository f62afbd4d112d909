"""The AWS side of node_autoscaler karpenter (eks-staging's choice), with aws_cdk.assertions: what it adds, scoped to
this cluster, and what the Cluster Autoscaler's environment (prod) does not get."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk.assertions import Match, Template

from ops.infra import settings
from ops.infra.stack import INTERRUPTION_EVENTS, KARPENTER_READ_ACTIONS
from ops.k8s import karpenter, objects, render

Obj = dict[str, Any]
KARPENTER_ENV = "staging"
CA_ENV = "prod"
# What node_autoscaler karpenter adds to a cluster stack (and the Cluster Autoscaler's environment lacks).
KARPENTER_RESOURCES = {
    "AWS::SQS::Queue": 1,
    "AWS::SQS::QueuePolicy": 1,
    "AWS::Events::Rule": len(INTERRUPTION_EVENTS),
    "AWS::EKS::PodIdentityAssociation": 1,
}


def _template(templates: dict[str, Template], env: str) -> Template:
    return templates[settings.environment(env).stack_name]


def _by_name(template: Template, kind: str, key: str) -> dict[str, Obj]:
    return {
        json.dumps(r["Properties"].get(key), sort_keys=True): r["Properties"]
        for r in template.find_resources(kind).values()
    }


def test_each_environment_follows_its_overlays_choice() -> None:
    assert settings.environment(KARPENTER_ENV).node_autoscaler == "karpenter"
    assert settings.environment(CA_ENV).node_autoscaler == "cluster-autoscaler"
    assert settings.environment(KARPENTER_ENV).interruption_queue == "eks-inference-staging-karpenter"
    assert settings.environment(CA_ENV).interruption_queue is None


def test_what_each_choice_adds(templates: dict[str, Template]) -> None:
    staging, prod = _template(templates, KARPENTER_ENV), _template(templates, CA_ENV)
    for kind, count in KARPENTER_RESOURCES.items():
        staging.resource_count_is(kind, count)
        prod.resource_count_is(kind, 0 if kind != "AWS::EKS::PodIdentityAssociation" else 1)
    roles = {r["Properties"].get("RoleName") for r in staging.find_resources("AWS::IAM::Role").values()}
    assert {"eks-inference-staging-karpenter", "eks-inference-staging-karpenter-node"} <= roles
    assert "eks-inference-staging-cluster-autoscaler" not in roles
    prod_roles = {r["Properties"].get("RoleName") for r in prod.find_resources("AWS::IAM::Role").values()}
    assert "eks-inference-prod-cluster-autoscaler" in prod_roles
    assert not any(str(n).endswith("karpenter-node") for n in prod_roles)


def test_the_interruption_queue_gets_the_four_event_kinds(templates: dict[str, Template]) -> None:
    staging = _template(templates, KARPENTER_ENV)
    queue = next(iter(staging.find_resources("AWS::SQS::Queue").values()))["Properties"]
    assert queue["QueueName"] == settings.environment(KARPENTER_ENV).interruption_queue
    assert queue["MessageRetentionPeriod"] == 300
    assert "KmsMasterKeyId" in queue
    patterns = sorted(
        (r["Properties"]["EventPattern"]["source"], r["Properties"]["EventPattern"]["detail-type"])
        for r in staging.find_resources("AWS::Events::Rule").values()
    )
    assert patterns == sorted(([s], [d]) for s, d in INTERRUPTION_EVENTS.values())
    for rule in staging.find_resources("AWS::Events::Rule").values():
        (target,) = rule["Properties"]["Targets"]
        assert "Fn::GetAtt" in target["Arn"]  # the queue of this stack
    # The queue accepts only what EventBridge sends, over TLS.
    policy = json.dumps(next(iter(staging.find_resources("AWS::SQS::QueuePolicy").values())))
    assert "events.amazonaws.com" in policy
    assert "aws:SecureTransport" in policy


def test_nodes_join_through_an_ec2_linux_access_entry(templates: dict[str, Template]) -> None:
    staging = _template(templates, KARPENTER_ENV)
    staging.has_resource_properties(
        "AWS::EKS::AccessEntry",
        {"Type": "EC2_LINUX", "PrincipalArn": {"Fn::GetAtt": [Match.string_like_regexp("KarpenterNodeRole"), "Arn"]}},
    )
    # The name every rendered EC2NodeClass asks for.
    for node_class in objects.find(render.render("eks-staging"), "EC2NodeClass"):
        assert node_class["spec"]["role"] == karpenter.node_role_name(settings.environment(KARPENTER_ENV).cluster_name)


def test_discovery_tags_on_the_node_subnets_and_security_group(templates: dict[str, Template]) -> None:
    staging = _template(templates, KARPENTER_ENV)
    tag = {"Key": karpenter.DISCOVERY_TAG, "Value": "eks-inference-staging"}
    subnets = [r["Properties"] for r in staging.find_resources("AWS::EC2::Subnet").values()]
    tagged = [s for s in subnets if tag in s.get("Tags", [])]
    assert len(tagged) == 3  # the three private subnets, none of the public ones
    assert all({"Key": "aws-cdk:subnet-type", "Value": "Private"} in s["Tags"] for s in tagged)
    groups = [r["Properties"] for r in staging.find_resources("AWS::EC2::SecurityGroup").values()]
    assert sum(tag in g.get("Tags", []) for g in groups) == 1


def _controller_statements(template: Template) -> list[Obj]:
    (policy,) = [
        r["Properties"]
        for r in template.find_resources("AWS::IAM::ManagedPolicy").values()
        if "Karpenter" in r["Properties"].get("Description", "")
    ]
    return list(policy["PolicyDocument"]["Statement"])


def test_the_controller_role_is_pod_identity_and_least_privilege(templates: dict[str, Template]) -> None:
    staging = _template(templates, KARPENTER_ENV)
    staging.has_resource_properties(
        "AWS::EKS::PodIdentityAssociation", {"Namespace": karpenter.NAMESPACE, "ServiceAccount": karpenter.CONTROLLER}
    )
    statements = {s["Sid"]: s for s in _controller_statements(staging)}
    writes = {
        "AllowScopedEC2LaunchTemplateAccessActions",
        "AllowScopedEC2InstanceActionsWithTags",
        "AllowScopedResourceCreationTagging",
        "AllowScopedResourceTagging",
        "AllowScopedDeletion",
        "AllowScopedInstanceProfileCreationActions",
        "AllowScopedInstanceProfileActions",
    }
    assert writes <= set(statements)
    for sid in writes:
        # Every write: only on resources tagged (or being tagged) as this cluster's.
        assert "kubernetes.io/cluster/eks-inference-staging" in json.dumps(statements[sid]["Condition"]), sid
    reads = statements["AllowRegionalReadActions"]
    assert sorted(reads["Action"]) == sorted(KARPENTER_READ_ACTIONS)
    assert "aws:RequestedRegion" in reads["Condition"]["StringEquals"]
    assert statements["AllowPassingInstanceRole"]["Condition"] == {
        "StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}
    }
    # No statement grants everything on everything; "*" resources only for reads and pricing.
    for sid, s in statements.items():
        actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
        assert "*" not in actions, sid
        if s["Resource"] == "*":
            assert all(":Describe" in a or a == "pricing:GetProducts" for a in actions), sid


@pytest.mark.parametrize("env", [KARPENTER_ENV])
def test_no_cluster_autoscaler_discovery_tags_with_karpenter(templates: dict[str, Template], env: str) -> None:
    for group in _template(templates, env).find_resources("AWS::EKS::Nodegroup").values():
        assert not any(k.startswith("k8s.io/cluster-autoscaler") for k in group["Properties"]["Tags"])
