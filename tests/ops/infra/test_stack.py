"""The synthesized CloudFormation, checked with aws_cdk.assertions: generated from nodegroups.yaml and the overlays."""

from __future__ import annotations

from typing import Any

import pytest
from aws_cdk.assertions import Match, Template

from ops.infra import settings
from ops.infra.stack import AUTOSCALER_READ_ACTIONS, AUTOSCALER_WRITE_ACTIONS, KUBELET_OWNED_LABELS
from ops.infra.synth import Synthesized, build
from ops.k8s import addons as k8s_addons
from ops.k8s import nodegroups as k8s_nodegroups
from ops.k8s import objects, policies, render
from ops.k8s.nodegroups import load_nodegroups

ENVS = sorted(settings.ENV_OVERLAYS)


def _nodegroups(template: Template) -> dict[str, dict[str, Any]]:
    found = template.find_resources("AWS::EKS::Nodegroup")
    return {r["Properties"]["NodegroupName"]: r["Properties"] for r in found.values()}


def _one(template: Template, kind: str) -> dict[str, Any]:
    (resource,) = template.find_resources(kind).values()
    props: dict[str, Any] = resource["Properties"]
    return props


@pytest.mark.parametrize("env", ENVS)
def test_one_managed_node_group_per_nodegroups_yaml_entry(templates: dict[str, Template], env: str) -> None:
    environment = settings.environment(env)
    groups = _nodegroups(templates[environment.stack_name])
    expected = load_nodegroups()
    assert set(groups) == set(expected)
    for name, group in expected.items():
        props = groups[name]
        assert props["InstanceTypes"] == [group.instance_type]
        assert props["AmiType"] == group.ami_type
        assert props["ScalingConfig"] == {
            "MinSize": group.min_size,
            "MaxSize": group.max_size,
            "DesiredSize": group.min_size,
        }
        assert props["DiskSize"] == group.disk_size_gib
        assert props["CapacityType"] == "ON_DEMAND"
        # Every label of nodegroups.yaml that the node group may set (EKS and the kubelet set the rest).
        assert props["Labels"] == {k: v for k, v in group.labels.items() if k not in KUBELET_OWNED_LABELS}
        assert props.get("Taints", []) == [
            {"Key": t["key"], "Value": t["value"], "Effect": t["effect"].replace("NoSchedule", "NO_SCHEDULE")}
            for t in group.taints
        ]
        assert props["Tags"]["k8s.io/cluster-autoscaler/enabled"] == "true"
        assert props["Tags"][f"k8s.io/cluster-autoscaler/{environment.cluster_name}"] == "owned"


def test_gpu_group_is_the_pinned_nvidia_al2023_ami(prod: Template) -> None:
    groups = _nodegroups(prod)
    eks = settings.versions()["eks"]
    gpu = groups["gpu-t4"]
    assert gpu["AmiType"] == "AL2023_x86_64_NVIDIA" == eks["gpu_ami_family"]
    assert gpu["ReleaseVersion"] == eks["gpu_ami_release_version"]
    # The release version and the AMI name agree on the Kubernetes minor and the build date.
    minor, date = eks["gpu_ami_release"].split("-v")
    assert eks["gpu_ami_release_version"].startswith(minor + ".")
    assert eks["gpu_ami_release_version"].endswith("-" + date)
    # The label everything GPU keys on (device plugin, DCGM, the GPU affinity, the autoscaler) comes from here.
    assert gpu["Labels"][k8s_nodegroups.ACCELERATOR_LABEL] == "nvidia-tesla-t4"
    assert gpu["Taints"] == [{"Key": "nvidia.com/gpu", "Value": "true", "Effect": "NO_SCHEDULE"}]
    assert "ReleaseVersion" not in groups["cpu-general"]
    assert groups["cpu-general"]["AmiType"] == "AL2023_x86_64_STANDARD"


def test_gpu_group_holds_the_hpa_maximum_plus_a_rollout_surge(prod: Template) -> None:
    gpu = _nodegroups(prod)["gpu-t4"]
    assert (
        gpu["ScalingConfig"]["MaxSize"] * 1 == policies.gpu_capacity() == policies.gpu_peak(render.render("eks-prod"))
    )


def test_node_groups_follow_nodegroups_yaml(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Generated, not copied: a change in nodegroups.yaml is a change in the template."""
    groups = list(load_nodegroups().values())
    bigger = [g if g.name != "gpu-t4" else type(g)(**{**g.__dict__, "max_size": 9}) for g in groups]
    monkeypatch.setattr(settings, "nodegroups", lambda: bigger)
    _, stacks = build(["staging"], tmp_path / "out")
    template = Template.from_stack(stacks[settings.environment("staging").stack_name])
    assert _nodegroups(template)["gpu-t4"]["ScalingConfig"]["MaxSize"] == 9


@pytest.mark.parametrize("env", ENVS)
def test_cluster(templates: dict[str, Template], env: str) -> None:
    environment = settings.environment(env)
    cluster = _one(templates[environment.stack_name], "AWS::EKS::Cluster")
    assert cluster["Name"] == environment.cluster_name
    assert cluster["Version"] == settings.versions()["eks"]["kubernetes_minor"]
    types = {t["Type"] for t in cluster["Logging"]["ClusterLogging"]["EnabledTypes"]}
    assert types == {"api", "audit", "authenticator", "controllerManager", "scheduler"}
    assert cluster["EncryptionConfig"][0]["Resources"] == ["secrets"]
    vpc = cluster["ResourcesVpcConfig"]
    assert vpc["EndpointPrivateAccess"] is True
    assert vpc["PublicAccessCidrs"] == ["203.0.113.0/24"]
    assert cluster["AccessConfig"]["AuthenticationMode"] == "API"


def test_the_cluster_name_is_the_one_the_autoscaler_discovers(rendered_prod: list[dict[str, Any]]) -> None:
    (cm,) = [
        o for o in objects.find(rendered_prod, "ConfigMap") if o["metadata"]["name"].startswith("cluster-autoscaler")
    ]
    assert cm["data"]["CLUSTER_NAME"] == settings.environment("prod").cluster_name


def test_vpc_cni_enforces_network_policies(prod: Template) -> None:
    prod.has_resource_properties(
        "AWS::EKS::Addon",
        {"AddonName": "vpc-cni", "ConfigurationValues": '{"enableNetworkPolicy":"true"}'},
    )
    addons = {r["Properties"]["AddonName"] for r in prod.find_resources("AWS::EKS::Addon").values()}
    assert addons == {a.eks.addon for a in k8s_addons.eks_addons() if a.eks is not None}


@pytest.mark.parametrize("env", ENVS)
def test_metrics_server_is_an_eks_addon(templates: dict[str, Template], env: str) -> None:
    """The CPU HPAs read the Metrics API, which EKS does not deploy: the community add-on, pinned, after a node."""
    template = templates[settings.environment(env).stack_name]
    eks = k8s_addons.load_addons()["metrics-server"].eks
    assert eks is not None
    template.has_resource_properties("AWS::EKS::Addon", {"AddonName": "metrics-server", "AddonVersion": eks.version})
    (logical,) = [
        k
        for k, r in template.find_resources("AWS::EKS::Addon").items()
        if r["Properties"]["AddonName"] == "metrics-server"
    ]
    nodegroups = template.find_resources("AWS::EKS::Nodegroup")
    cpu = next(k for k, r in nodegroups.items() if r["Properties"]["NodegroupName"] == "cpu-general")
    assert cpu in template.find_resources("AWS::EKS::Addon")[logical]["DependsOn"]


def test_nodes_wait_for_the_cni_and_coredns_for_a_node(prod: Template) -> None:
    nodegroups = prod.find_resources("AWS::EKS::Nodegroup")
    addons = {r["Properties"]["AddonName"]: logical for logical, r in prod.find_resources("AWS::EKS::Addon").items()}
    for resource in nodegroups.values():
        assert addons["vpc-cni"] in resource["DependsOn"]
    cpu = next(k for k, r in nodegroups.items() if r["Properties"]["NodegroupName"] == "cpu-general")
    assert cpu in prod.find_resources("AWS::EKS::Addon")[addons["coredns"]]["DependsOn"]


@pytest.fixture(scope="module")
def rendered_prod() -> list[dict[str, Any]]:
    return render.render("eks-prod")


def test_autoscaler_role_is_bound_to_its_service_account(prod: Template, rendered_prod: list[dict[str, Any]]) -> None:
    environment = settings.environment("prod")
    association = _one(prod, "AWS::EKS::PodIdentityAssociation")
    (sa,) = objects.find(rendered_prod, "ServiceAccount", "cluster-autoscaler")
    assert (association["Namespace"], association["ServiceAccount"]) == (
        sa["metadata"]["namespace"],
        sa["metadata"]["name"],
    )
    prod.has_resource_properties(
        "AWS::IAM::Role",
        {
            "RoleName": environment.autoscaler_role_name,
            "AssumeRolePolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {"Action": "sts:AssumeRole", "Principal": {"Service": "pods.eks.amazonaws.com"}}
                        ),
                        Match.object_like(
                            {"Action": "sts:TagSession", "Principal": {"Service": "pods.eks.amazonaws.com"}}
                        ),
                    ]
                )
            },
        },
    )


def test_autoscaler_policy_is_least_privilege(prod: Template) -> None:
    cluster = settings.environment("prod").cluster_name
    policy = _one(prod, "AWS::IAM::ManagedPolicy")
    statements = {s["Sid"]: s for s in policy["PolicyDocument"]["Statement"]}
    assert set(statements) == {"Discover", "ReadManagedNodegroups", "ScaleOwnNodegroups"}
    assert sorted(statements["Discover"]["Action"]) == sorted(AUTOSCALER_READ_ACTIONS)
    assert all(a.split(":")[1].startswith(("Describe", "Get")) for a in AUTOSCALER_READ_ACTIONS)
    scale = statements["ScaleOwnNodegroups"]
    assert sorted(scale["Action"]) == sorted(AUTOSCALER_WRITE_ACTIONS)
    # Scaling only the ASGs tagged as this cluster's (EKS puts these tags on every managed node group's ASG).
    assert scale["Condition"] == {
        "StringEquals": {
            "aws:ResourceTag/k8s.io/cluster-autoscaler/enabled": "true",
            f"aws:ResourceTag/k8s.io/cluster-autoscaler/{cluster}": "owned",
        }
    }
    assert "autoScalingGroup" in str(scale["Resource"])
    assert f"nodegroup/{cluster}/*" in str(statements["ReadManagedNodegroups"]["Resource"])
    # Nothing else is granted anywhere in the stack.
    actions = {
        a
        for r in prod.find_resources("AWS::IAM::ManagedPolicy").values()
        for s in r["Properties"]["PolicyDocument"]["Statement"]
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert not any(a.endswith("*") for a in actions)


def test_ecr_repositories_are_the_overlay_images(synthesized: Synthesized, templates: dict[str, Template]) -> None:
    registry = templates[settings.REGISTRY_STACK]
    repos = {r["Properties"]["RepositoryName"]: r for r in registry.find_resources("AWS::ECR::Repository").values()}
    for env in ENVS:
        assert set(repos) == set(settings.environment(env).ecr_repositories)
    assert set(repos) == {"eks-inference/image-classifier", "eks-inference/text-classifier"}
    for repo in repos.values():
        props = repo["Properties"]
        assert props["ImageTagMutability"] == "IMMUTABLE"
        assert props["ImageScanningConfiguration"] == {"ScanOnPush": True}
        assert props["EncryptionConfiguration"]["EncryptionType"] == "KMS"
        assert repo["DeletionPolicy"] == "Retain"


def test_prod_has_a_nat_gateway_per_zone_staging_one(templates: dict[str, Template]) -> None:
    counts = {
        env: len(templates[settings.environment(env).stack_name].find_resources("AWS::EC2::NatGateway")) for env in ENVS
    }
    assert counts == {"prod": 3, "staging": 1}


def test_no_lambda_custom_resources(templates: dict[str, Template]) -> None:
    """Everything is native CloudFormation: no Lambda-backed custom resource to patch, log or scan."""
    for template in templates.values():
        assert template.find_resources("AWS::Lambda::Function") == {}
        assert not [t for t in template.to_json()["Resources"].values() if t["Type"].startswith("Custom::")]


def test_every_synthesized_resource_type(templates: dict[str, Template]) -> None:
    """The inventory docs/infra.md lists; update both together."""
    types = {name: sorted({r["Type"] for r in t.to_json()["Resources"].values()}) for name, t in templates.items()}
    assert types[settings.REGISTRY_STACK] == ["AWS::ECR::Repository", "AWS::KMS::Key"]
    assert types[settings.environment("prod").stack_name] == [
        "AWS::EC2::EIP",
        "AWS::EC2::FlowLog",
        "AWS::EC2::InternetGateway",
        "AWS::EC2::NatGateway",
        "AWS::EC2::Route",
        "AWS::EC2::RouteTable",
        "AWS::EC2::SecurityGroup",
        "AWS::EC2::Subnet",
        "AWS::EC2::SubnetRouteTableAssociation",
        "AWS::EC2::VPC",
        "AWS::EC2::VPCGatewayAttachment",
        "AWS::EKS::Addon",
        "AWS::EKS::Cluster",
        "AWS::EKS::Nodegroup",
        "AWS::EKS::PodIdentityAssociation",
        "AWS::IAM::ManagedPolicy",
        "AWS::IAM::Policy",
        "AWS::IAM::Role",
        "AWS::KMS::Key",
        "AWS::Logs::LogGroup",
        "AWS::SSM::Parameter",
    ]
