"""The synthesized CloudFormation, checked with aws_cdk.assertions: generated from nodegroups.yaml and the overlays."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from aws_cdk.assertions import Match, Template

from ops.infra import access, settings
from ops.infra.stack import (
    AUTOSCALER_READ_ACTIONS,
    AUTOSCALER_WRITE_ACTIONS,
    IMDS_HOP_LIMIT,
    INTERFACE_ENDPOINTS,
    KUBELET_OWNED_LABELS,
    ROOT_DEVICE,
    UPGRADE_SUPPORT_TYPE,
)
from ops.infra.synth import Synthesized, build
from ops.k8s import addons as k8s_addons
from ops.k8s import nodegroups as k8s_nodegroups
from ops.k8s import objects, policies, render
from ops.k8s.nodegroups import load_nodegroups, managed_nodegroups

# The day this test suite is about (the support-end test compares against the real clock, not this).
TODAY = datetime.date.today()

ENVS = sorted(settings.ENV_OVERLAYS)


def _nodegroups(template: Template) -> dict[str, dict[str, Any]]:
    found = template.find_resources("AWS::EKS::Nodegroup")
    return {r["Properties"]["NodegroupName"]: r["Properties"] for r in found.values()}


def _managed(env: str) -> dict[str, k8s_nodegroups.NodeGroup]:
    """The managed node groups an environment's stack creates: every one with the Cluster Autoscaler; with Karpenter
    only those of entries with a floor (its NodePools launch the rest)."""
    karpenter = settings.environment(env).node_autoscaler == "karpenter"
    return {m.name: m for g in load_nodegroups().values() if not karpenter or g.min_size > 0 for m in g.managed()}


def _one(template: Template, kind: str) -> dict[str, Any]:
    (resource,) = template.find_resources(kind).values()
    props: dict[str, Any] = resource["Properties"]
    return props


@pytest.mark.parametrize("env", ENVS)
def test_one_managed_node_group_per_nodegroups_yaml_entry_or_zone(templates: dict[str, Template], env: str) -> None:
    environment = settings.environment(env)
    groups = _nodegroups(templates[environment.stack_name])
    expected = _managed(env)
    everything = {"cpu-general", "gpu-t4-us-east-1a", "gpu-t4-us-east-1b", "gpu-t4-us-east-1c"}
    assert set(managed_nodegroups()) == everything
    assert (
        set(groups) == set(expected) == (everything if environment.node_autoscaler != "karpenter" else {"cpu-general"})
    )
    for name, group in expected.items():
        props = groups[name]
        assert props["InstanceTypes"] == [group.instance_type]
        assert props["AmiType"] == group.ami_type
        assert props["ScalingConfig"] == {
            "MinSize": group.min_size,
            "MaxSize": group.max_size,
            "DesiredSize": group.min_size,
        }
        assert "DiskSize" not in props  # the launch template's root volume instead
        assert props["NodeRepairConfig"] == {"Enabled": True}
        assert props["Tags"]["eks-inference/nodegroups-entry"] == group.entry
        assert props["CapacityType"] == "ON_DEMAND"
        # Every label of nodegroups.yaml that the node group may set (EKS and the kubelet set the rest).
        assert props["Labels"] == {k: v for k, v in group.labels.items() if k not in KUBELET_OWNED_LABELS}
        assert props.get("Taints", []) == [
            {"Key": t["key"], "Value": t["value"], "Effect": t["effect"].replace("NoSchedule", "NO_SCHEDULE")}
            for t in group.taints
        ]
        if environment.node_autoscaler == "cluster-autoscaler":  # Karpenter discovers no ASGs
            assert props["Tags"]["k8s.io/cluster-autoscaler/enabled"] == "true"
            assert props["Tags"][f"k8s.io/cluster-autoscaler/{environment.cluster_name}"] == "owned"


@pytest.mark.parametrize("zone", ["us-east-1a", "us-east-1b", "us-east-1c"])
def test_gpu_group_is_the_pinned_nvidia_al2023_ami(prod: Template, zone: str) -> None:
    groups = _nodegroups(prod)
    eks = settings.versions()["eks"]
    gpu = groups[f"gpu-t4-{zone}"]
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


def _subnet_zones(template: Template) -> dict[str, str]:
    """Logical id of each subnet -> its availability zone."""
    return {k: r["Properties"]["AvailabilityZone"] for k, r in template.find_resources("AWS::EC2::Subnet").items()}


def test_each_gpu_group_lives_in_its_own_zone(prod: Template) -> None:
    """One zone per GPU group: a pending pod's zone decides which group the autoscaler grows."""
    zones = _subnet_zones(prod)
    for name, props in _nodegroups(prod).items():
        group_zones = {zones[s["Ref"]] for s in props["Subnets"]}
        assert group_zones == set(managed_nodegroups()[name].zones), name
    assert len({zones[s["Ref"]] for s in _nodegroups(prod)["cpu-general"]["Subnets"]}) == 3


def test_gpu_groups_hold_the_hpa_maximum_plus_a_rollout_surge(prod: Template) -> None:
    gpu = [g for name, g in _nodegroups(prod).items() if name.startswith("gpu-t4-")]
    total = sum(g["ScalingConfig"]["MaxSize"] for g in gpu)
    assert total == policies.gpu_capacity() >= policies.gpu_peak(render.render("eks-prod"))


def test_node_groups_follow_nodegroups_yaml(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Generated, not copied: a change in nodegroups.yaml's one GPU entry is a change in all three zones' groups."""
    groups = list(load_nodegroups().values())
    bigger = [g if g.name != "gpu-t4" else type(g)(**{**g.__dict__, "max_size": 9}) for g in groups]
    monkeypatch.setattr(settings, "nodegroups", lambda: bigger)
    _, stacks = build(["prod"], tmp_path / "out")  # prod: the Cluster Autoscaler's managed GPU groups
    template = Template.from_stack(stacks[settings.environment("prod").stack_name])
    found = {n: g["ScalingConfig"]["MaxSize"] for n, g in _nodegroups(template).items() if n.startswith("gpu-t4-")}
    assert found == {"gpu-t4-us-east-1a": 9, "gpu-t4-us-east-1b": 9, "gpu-t4-us-east-1c": 9}


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
    assert cluster["AccessConfig"] == {"AuthenticationMode": "API", "BootstrapClusterCreatorAdminPermissions": False}
    assert cluster["UpgradePolicy"] == {"SupportType": UPGRADE_SUPPORT_TYPE} == {"SupportType": "STANDARD"}


def test_the_pinned_minor_is_still_in_standard_support() -> None:
    """Fails from the day EKS standard support of [eks].kubernetes_minor ends: upgrade before, not after.

    With UpgradePolicy STANDARD, EKS upgrades the control plane itself on that day (the node groups and
    the pinned GPU AMI would then lag a minor behind); with EXTENDED it would bill extended support.
    """
    eks = settings.versions()["eks"]
    end = datetime.date.fromisoformat(eks["standard_support_end"])
    assert end > TODAY, (
        f"EKS standard support of {eks['kubernetes_minor']} ended on {end}: move [eks] in base-images/versions.toml "
        "(kubernetes_minor, standard_support_end, the GPU AMI), cluster-autoscaler and tools.toml to the next minor"
    )
    if eks["kubernetes_minor"] == "1.35":
        assert end == datetime.date(2027, 3, 27)  # the EKS release calendar's date for 1.35


def _access_entries(template: Template) -> dict[str, dict[str, Any]]:
    """Access entries by the stack parameter their principal comes from."""
    found = template.find_resources("AWS::EKS::AccessEntry")
    return {
        r["Properties"]["PrincipalArn"]["Ref"]: r["Properties"]
        for r in found.values()
        if "Ref"
        in r["Properties"]["PrincipalArn"]  # Karpenter's node role has its own (tests/ops/infra/test_karpenter)
    }


def _policy_name(policy: dict[str, Any]) -> str:
    return str(policy["PolicyArn"]["Fn::Join"][1][-1]).rsplit("/", 1)[1]


@pytest.mark.parametrize("env", ENVS)
def test_access_entries_for_the_admin_and_deploy_roles(templates: dict[str, Template], env: str) -> None:
    """Someone can kubectl in: two explicit entries, their principals parameters (no ARN in the template)."""
    template = templates[settings.environment(env).stack_name]
    entries = _access_entries(template)
    assert set(entries) == {access.ADMIN_ROLE_PARAMETER, access.DEPLOY_ROLE_PARAMETER}
    (admin,) = entries[access.ADMIN_ROLE_PARAMETER]["AccessPolicies"]
    assert _policy_name(admin) == "AmazonEKSClusterAdminPolicy"
    assert admin["AccessScope"] == {"Type": "cluster"}
    (deployer,) = entries[access.DEPLOY_ROLE_PARAMETER]["AccessPolicies"]
    grant = access.deploy_access(render.render(settings.environment(env).overlay))
    assert _policy_name(deployer) == grant.policy
    # The overlays apply cluster-scoped RBAC (the autoscaler's ClusterRole) and PriorityClasses, which no
    # EKS access policy short of cluster admin may create.
    assert grant.cluster_scope
    assert {"ClusterRole", "ClusterRoleBinding", "PriorityClass"} <= set(grant.cluster_kinds)
    assert deployer["AccessScope"] == {"Type": "cluster"}
    parameters = template.to_json()["Parameters"]
    for name in entries:
        assert parameters[name]["Type"] == "String"
        assert "Default" not in parameters[name]  # never a hard-coded principal
        assert parameters[name]["AllowedPattern"] == access.ROLE_ARN.pattern
    assert "arn:aws:iam::" not in str(template.to_json())


def test_deploy_access_is_namespaced_when_the_overlay_is() -> None:
    """The deploy role's grant follows what the overlay applies: namespaced objects only -> AmazonEKSAdminPolicy."""
    rendered = render.render("eks-prod")
    namespaced = [o for o in rendered if o["metadata"].get("namespace")]
    grant = access.deploy_access(namespaced)
    assert grant == access.Grant("AmazonEKSAdminPolicy", False, ("inference", "kube-system"))


@pytest.mark.parametrize("env", ENVS)
def test_launch_templates_enforce_imdsv2_and_encrypted_gp3(templates: dict[str, Template], env: str) -> None:
    template = templates[settings.environment(env).stack_name]
    launch_templates = template.find_resources("AWS::EC2::LaunchTemplate")
    # One per nodegroups.yaml entry that becomes managed node groups.
    assert len(launch_templates) == len({g.entry for g in _managed(env).values()})
    by_id = {k: r["Properties"]["LaunchTemplateData"] for k, r in launch_templates.items()}
    for name, props in _nodegroups(template).items():
        data = by_id[props["LaunchTemplate"]["Id"]["Ref"]]
        assert data["MetadataOptions"] == {
            "HttpEndpoint": "enabled",
            "HttpTokens": "required",
            "HttpPutResponseHopLimit": IMDS_HOP_LIMIT,
        }
        assert IMDS_HOP_LIMIT == 1
        (root,) = data["BlockDeviceMappings"]
        assert root["DeviceName"] == ROOT_DEVICE
        ebs = root["Ebs"]
        assert ebs["VolumeType"] == "gp3"
        assert ebs["Encrypted"] is True
        assert ebs["VolumeSize"] == _managed(env)[name].disk_size_gib
        assert ebs["Throughput"] > 125  # above gp3's baseline: layer unpacking is disk-bound
        assert "UserData" not in data
        assert "ImageId" not in data
    gpu_disk = load_nodegroups()["gpu-t4"].disk_size_gib
    assert gpu_disk >= 100


@pytest.mark.parametrize("env", ENVS)
def test_vpc_endpoints_for_image_pulls_and_pod_identity(templates: dict[str, Template], env: str) -> None:
    template = templates[settings.environment(env).stack_name]
    endpoints = [r["Properties"] for r in template.find_resources("AWS::EC2::VPCEndpoint").values()]

    def service(e: dict[str, Any]) -> tuple[str, str]:
        name = e["ServiceName"]
        suffix = name if isinstance(name, str) else name["Fn::Join"][1][-1]  # the S3 gateway names the region by Ref
        return suffix.rsplit(".", 2)[-1] if suffix.endswith((".api", ".dkr")) else suffix.rsplit(".", 1)[-1], (
            e.get("VpcEndpointType", "Gateway")
        )

    found = sorted(service(e) for e in endpoints)
    assert [(n if n not in ("api", "dkr") else "ecr." + n, k) for n, k in found] == [
        ("ecr.api", "Interface"),
        ("ecr.dkr", "Interface"),
        ("eks-auth", "Interface"),
        ("s3", "Gateway"),
        ("sts", "Interface"),
    ]
    assert len(INTERFACE_ENDPOINTS) == 4
    for e in endpoints:
        if e.get("VpcEndpointType") == "Interface":
            assert e["PrivateDnsEnabled"] is True
            assert len(e["SubnetIds"]) == 3  # the nodes' private subnets, one per zone
        else:
            assert len(e["RouteTableIds"]) == 3
    (sg,) = [
        r["Properties"]
        for r in template.find_resources("AWS::EC2::SecurityGroup").values()
        if "interface endpoints" in r["Properties"]["GroupDescription"]
    ]
    assert [(i["FromPort"], i["ToPort"]) for i in sg["SecurityGroupIngress"]] == [(443, 443)]


def test_the_cluster_name_is_the_one_the_autoscaler_discovers(rendered_prod: list[dict[str, Any]]) -> None:
    (cm,) = [
        o
        for o in objects.find(rendered_prod, "ConfigMap")
        if o["metadata"]["name"].startswith(objects.NODE_AUTOSCALER_SETTINGS)
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
def test_auto_repair_sees_gpu_health(templates: dict[str, Template], env: str) -> None:
    """Every node group repairs itself, and the node monitoring agent that turns Xid errors into the
    AcceleratedHardwareReady condition auto-repair acts on is an add-on of the cluster."""
    template = templates[settings.environment(env).stack_name]
    template.has_resource_properties("AWS::EKS::Addon", {"AddonName": "eks-node-monitoring-agent"})
    groups = template.find_resources("AWS::EKS::Nodegroup").values()
    # With Karpenter the GPU nodes are its own, repaired by its NodeRepair feature gate (components/karpenter).
    if settings.environment(env).node_autoscaler != "karpenter":
        assert any(g["Properties"]["NodegroupName"].startswith("gpu-") for g in groups)
    assert all(g["Properties"]["NodeRepairConfig"] == {"Enabled": True} for g in groups)


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
        "AWS::EC2::LaunchTemplate",
        "AWS::EC2::NatGateway",
        "AWS::EC2::Route",
        "AWS::EC2::RouteTable",
        "AWS::EC2::SecurityGroup",
        "AWS::EC2::Subnet",
        "AWS::EC2::SubnetRouteTableAssociation",
        "AWS::EC2::VPC",
        "AWS::EC2::VPCEndpoint",
        "AWS::EC2::VPCGatewayAttachment",
        "AWS::EKS::AccessEntry",
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
