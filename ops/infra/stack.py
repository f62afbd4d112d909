"""The CDK stacks: ECR repositories (per account) and, per environment, the EKS cluster with its node groups."""

from __future__ import annotations

from typing import Any, cast

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_eks_v2 as eks
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from ops.infra import access, settings
from ops.infra.settings import Environment
from ops.k8s import addons, karpenter, render
from ops.k8s.nodegroups import NodeGroup

# aws-cdk-lib's enum member per Kubernetes minor (settings.versions()["eks"]["kubernetes_minor"]).
KUBERNETES_VERSIONS = {"1.34": eks.KubernetesVersion.V1_34, "1.35": eks.KubernetesVersion.V1_35}
AMI_TYPES = {
    "AL2023_x86_64_STANDARD": eks.NodegroupAmiType.AL2023_X86_64_STANDARD,
    "AL2023_x86_64_NVIDIA": eks.NodegroupAmiType.AL2023_X86_64_NVIDIA,
}
TAINT_EFFECTS = {
    "NoSchedule": eks.TaintEffect.NO_SCHEDULE,
    "PreferNoSchedule": eks.TaintEffect.PREFER_NO_SCHEDULE,
    "NoExecute": eks.TaintEffect.NO_EXECUTE,
}
# Labels the kubelet (or EKS) sets itself; a managed node group refuses them in its `labels`.
KUBELET_OWNED_LABELS = ("eks.amazonaws.com/nodegroup", "node.kubernetes.io/instance-type")
# Who may reach the public API endpoint (the private one serves the VPC). Documentation range by default:
# set infra.public_access_cidrs in invoke.yaml (INVOKE_INFRA_PUBLIC_ACCESS_CIDRS) to your CI/VPN egress.
DEFAULT_PUBLIC_ACCESS_CIDRS = ("203.0.113.0/24",)
LOG_RETENTION = logs.RetentionDays.ONE_YEAR
# The Cluster Autoscaler's AWS permissions (kubernetes/autoscaler cloudprovider/aws/README.md):
# read-only discovery everywhere, scaling only on ASGs tagged as this cluster's.
AUTOSCALER_READ_ACTIONS = (
    "autoscaling:DescribeAutoScalingGroups",
    "autoscaling:DescribeAutoScalingInstances",
    "autoscaling:DescribeLaunchConfigurations",
    "autoscaling:DescribeScalingActivities",
    "autoscaling:DescribeTags",
    "ec2:DescribeImages",
    "ec2:DescribeInstanceTypes",
    "ec2:DescribeLaunchTemplateVersions",
    "ec2:GetInstanceTypesFromInstanceRequirements",
)
AUTOSCALER_WRITE_ACTIONS = ("autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup")
# Karpenter's AWS permissions (karpenter-provider-aws's reference controller policy, v1): launches, tags and
# terminations only of resources tagged as this cluster's and a NodePool's; reads in this region only.
KARPENTER_LAUNCH_ACTIONS = ("ec2:RunInstances", "ec2:CreateFleet")
KARPENTER_READ_ACTIONS = (
    "ec2:DescribeAvailabilityZones",
    "ec2:DescribeCapacityReservations",
    "ec2:DescribeImages",
    "ec2:DescribeInstances",
    "ec2:DescribeInstanceTypeOfferings",
    "ec2:DescribeInstanceTypes",
    "ec2:DescribeLaunchTemplates",
    "ec2:DescribeSecurityGroups",
    "ec2:DescribeSpotPriceHistory",
    "ec2:DescribeSubnets",
)
KARPENTER_QUEUE_ACTIONS = ("sqs:DeleteMessage", "sqs:GetQueueUrl", "sqs:ReceiveMessage")
KARPENTER_INSTANCE_PROFILE_ACTIONS = (
    "iam:AddRoleToInstanceProfile",
    "iam:RemoveRoleFromInstanceProfile",
    "iam:DeleteInstanceProfile",
    "iam:TagInstanceProfile",
)
# The tags Karpenter puts on what it launches, which its permissions are conditioned on.
NODEPOOL_TAG = "karpenter.sh/nodepool"
NODECLASS_TAG = "karpenter.k8s.aws/ec2nodeclass"
# What EventBridge sends to the interruption queue (source, detail-type): Karpenter drains the node first.
INTERRUPTION_EVENTS = {
    "ScheduledChange": ("aws.health", "AWS Health Event"),
    "SpotInterruption": ("aws.ec2", "EC2 Spot Instance Interruption Warning"),
    "Rebalance": ("aws.ec2", "EC2 Instance Rebalance Recommendation"),
    "InstanceStateChange": ("aws.ec2", "EC2 Instance State-change Notification"),
}
# EKS add-ons come from manifests/cluster-addons.yaml. Construct ids of the first four stay as they were deployed
# (a new logical id replaces the add-on); the others derive from the add-on's name.
ADDON_CONSTRUCT_IDS = {
    "vpc-cni": "VpcCni",
    "kube-proxy": "KubeProxy",
    "eks-pod-identity-agent": "PodIdentityAgent",
    "coredns": "CoreDns",
}
# EKS standard support only: when the pinned minor's standard support ends ([eks].standard_support_end in
# versions.toml), EKS upgrades the control plane instead of billing extended support.
UPGRADE_SUPPORT_TYPE = "STANDARD"
# Node root volumes (launch templates): gp3, encrypted, throughput above gp3's 125 MiB/s baseline so
# that unpacking the CUDA image's layers is not disk-bound. The AL2023 EKS AMIs boot from /dev/xvda.
ROOT_DEVICE = "/dev/xvda"
ROOT_VOLUME_THROUGHPUT_MIBPS = 250
ROOT_VOLUME_IOPS = 3000
# Instance metadata: IMDSv2 only, and one hop, so containers (one hop further) cannot reach the node role.
IMDS_HOP_LIMIT = 1
# Private paths to the AWS APIs a node boot and an image pull need (the S3 gateway carries the ECR layers).
INTERFACE_ENDPOINTS = {
    "EcrApi": ec2.InterfaceVpcEndpointAwsService.ECR,
    "EcrDocker": ec2.InterfaceVpcEndpointAwsService.ECR_DOCKER,
    "Sts": ec2.InterfaceVpcEndpointAwsService.STS,
    "EksAuth": ec2.InterfaceVpcEndpointAwsService.EKS_AUTH,
}
# The policies a node role needs (what CDK's node group would create per group; here one role per entry).
NODE_ROLE_POLICIES = ("AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy", "AmazonEC2ContainerRegistryReadOnly")


def discovery_tags(cluster_name: str) -> dict[str, str]:
    """The Cluster Autoscaler's auto-discovery tags (--node-group-auto-discovery=asg:tag=...)."""
    return {"k8s.io/cluster-autoscaler/enabled": "true", f"k8s.io/cluster-autoscaler/{cluster_name}": "owned"}


def nodegroup_labels(group: NodeGroup) -> dict[str, str]:
    """Labels the node group puts on its nodes: nodegroups.yaml's, minus those EKS and the kubelet set."""
    return {k: v for k, v in group.labels.items() if k not in KUBELET_OWNED_LABELS}


class RegistryStack(cdk.Stack):
    """The ECR repositories the overlays pull from: immutable tags, scan on push, KMS, retained on delete."""

    def __init__(self, scope: Construct, construct_id: str, *, repositories: tuple[str, ...], **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        key = kms.Key(self, "EcrKey", enable_key_rotation=True, description="eks-inference ECR repositories")
        self.repositories: dict[str, ecr.Repository] = {}
        for name in repositories:
            self.repositories[name] = ecr.Repository(
                self,
                "Repo-" + name.replace("/", "-"),
                repository_name=name,
                image_tag_mutability=ecr.TagMutability.IMMUTABLE,
                image_scan_on_push=True,
                encryption=ecr.RepositoryEncryption.KMS,
                encryption_key=key,
                removal_policy=cdk.RemovalPolicy.RETAIN,
                lifecycle_rules=[
                    ecr.LifecycleRule(
                        description="Keep the last 100 release images",
                        max_image_count=100,
                    )
                ],
            )


class ClusterStack(cdk.Stack):
    """One environment: VPC, EKS cluster, managed add-ons, the node groups of nodegroups.yaml, the autoscaler's role."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        environment: Environment,
        public_access_cidrs: tuple[str, ...] = DEFAULT_PUBLIC_ACCESS_CIDRS,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.eks_environment = environment
        groups = settings.nodegroups()
        eks_versions = settings.versions()["eks"]
        zones = sorted({z for g in groups for z in g.zones})

        log_key = kms.Key(self, "LogKey", enable_key_rotation=True, description="VPC flow logs")
        log_key.grant_encrypt_decrypt(iam.ServicePrincipal(f"logs.{self.region}.amazonaws.com"))
        flow_log_group = logs.LogGroup(self, "FlowLogs", retention=LOG_RETENTION, encryption_key=log_key)
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr("10.40.0.0/16"),
            availability_zones=zones,
            nat_gateways=environment.nat_gateways,
            # CDK's default-SG restriction is a Lambda custom resource; nothing here uses the default SG.
            restrict_default_security_group=False,
            subnet_configuration=[
                ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24),
                ec2.SubnetConfiguration(name="nodes", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=19),
            ],
            flow_logs={
                "all": ec2.FlowLogOptions(
                    destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_log_group),
                    traffic_type=ec2.FlowLogTrafficType.ALL,
                )
            },
        )
        # Where the AWS Load Balancer Controller may put load balancers.
        for subnet in self.vpc.public_subnets:
            cdk.Tags.of(subnet).add("kubernetes.io/role/elb", "1")
        for subnet in self.vpc.private_subnets:
            cdk.Tags.of(subnet).add("kubernetes.io/role/internal-elb", "1")

        secrets_key = kms.Key(self, "SecretsKey", enable_key_rotation=True, description="EKS secrets envelope")
        self.cluster = eks.Cluster(
            self,
            "Cluster",
            cluster_name=environment.cluster_name,
            version=KUBERNETES_VERSIONS[eks_versions["kubernetes_minor"]],
            vpc=self.vpc,
            vpc_subnets=[ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)],
            # Node groups come from nodegroups.yaml below, never a default one.
            default_capacity=0,
            default_capacity_type=eks.DefaultCapacityType.NODEGROUP,
            # Managed add-ons below instead of the unmanaged bootstrap copies.
            bootstrap_self_managed_addons=False,
            endpoint_access=eks.EndpointAccess.PUBLIC_AND_PRIVATE.only_from(*public_access_cidrs),
            cluster_logging=[
                eks.ClusterLoggingTypes.API,
                eks.ClusterLoggingTypes.AUDIT,
                eks.ClusterLoggingTypes.AUTHENTICATOR,
                eks.ClusterLoggingTypes.CONTROLLER_MANAGER,
                eks.ClusterLoggingTypes.SCHEDULER,
            ],
            secrets_encryption_key=secrets_key,
            # Every admin is an explicit access entry (below); not whoever ran CloudFormation.
            bootstrap_cluster_creator_admin_permissions=False,
            tags={"app.kubernetes.io/part-of": "eks-inference", "environment": environment.name},
        )
        self._upgrade_policy()
        self._vpc_endpoints()

        # jsii's Python typing misses that Cluster implements ICluster.
        cluster_ref = cast(eks.ICluster, self.cluster)
        # Networking add-ons first: a node without a CNI never becomes Ready.
        network_addons = self._cluster_addons(cluster_ref, after_nodes=False)

        self.nodegroups: dict[str, eks.Nodegroup] = {}
        for entry in groups:
            if not self._managed(entry):
                continue
            node_role = self._node_role(entry)
            launch_template = self._launch_template(entry)
            for group in entry.managed():
                self.nodegroups[group.name] = self._nodegroup(
                    group, environment, node_role, launch_template, network_addons
                )
        # CoreDNS and metrics-server need a node to run on: after the CPU group (minSize > 0).
        for addon in self._cluster_addons(cluster_ref, after_nodes=True):
            for group in (m for entry in groups for m in entry.managed()):
                if group.min_size > 0:
                    addon.node.add_dependency(self.nodegroups[group.name])

        if environment.node_autoscaler == karpenter.CONTROLLER:
            self.autoscaler_role = self._karpenter(environment)
        else:
            self.autoscaler_role = self._autoscaler_role(environment)
        self._access_entries()

        cdk.CfnOutput(self, "ClusterName", value=self.cluster.cluster_name)
        cdk.CfnOutput(self, "AutoscalerRoleArn", value=self.autoscaler_role.role_arn)

    def _managed(self, entry: NodeGroup) -> bool:
        """Whether an entry becomes EKS managed node groups: always with the Cluster Autoscaler; with Karpenter only
        the entries with a floor (minSize > 0: the nodes the controller, CoreDNS and the CPU baseline run on), while
        Karpenter's NodePools launch the rest (the GPU nodes, from zero)."""
        return self.eks_environment.node_autoscaler != karpenter.CONTROLLER or entry.min_size > 0

    def _cluster_addons(self, cluster: eks.ICluster, *, after_nodes: bool) -> list[eks.Addon]:
        """The EKS add-ons of manifests/cluster-addons.yaml whose pods need a node (`after_nodes`) or not."""
        return [
            eks.Addon(
                self,
                ADDON_CONSTRUCT_IDS.get(a.name) or a.name.title().replace("-", ""),
                cluster=cluster,
                addon_name=a.eks.addon,
                addon_version=a.eks.version,
                configuration_values=a.eks.configuration or None,
            )
            for a in addons.eks_addons()
            if a.eks is not None and a.eks.after_nodes == after_nodes
        ]

    def _nodegroup(
        self,
        group: NodeGroup,
        environment: Environment,
        node_role: iam.IRole,
        launch_template: ec2.LaunchTemplate,
        network_addons: list[eks.Addon],
    ) -> eks.Nodegroup:
        """One EKS managed node group: a nodegroups.yaml entry, or one zone of a per-zone entry."""
        eks_versions = settings.versions()["eks"]
        # A zone's group of a per-zone entry lives in that zone's private subnet only; the others span all three.
        subnets = (
            ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, availability_zones=list(group.zones))
            if group.family
            else ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)
        )
        nodegroup = self.cluster.add_nodegroup_capacity(
            "Nodegroup-" + group.name,
            nodegroup_name=group.name,
            instance_types=[ec2.InstanceType(group.instance_type)],
            ami_type=AMI_TYPES[group.ami_type],
            # The GPU AMI is pinned: driver and CUDA compatibility are checked against it (versions.toml).
            release_version=eks_versions["gpu_ami_release_version"] if group.gpus_per_node else None,
            capacity_type=eks.CapacityType.ON_DEMAND,
            min_size=group.min_size,
            max_size=group.max_size,
            desired_size=group.min_size,
            # The root volume is the launch template's (a managed node group refuses both).
            launch_template_spec=eks.LaunchTemplateSpec(
                id=launch_template.launch_template_id or "",
                version=launch_template.latest_version_number,
            ),
            node_role=node_role,
            # EKS replaces nodes that turn NotReady, or report an unhealthy accelerator, kernel, network,
            # storage or runtime condition (the node monitoring agent's conditions), instead of leaving them.
            enable_node_auto_repair=True,
            labels=nodegroup_labels(group),
            taints=[
                eks.TaintSpec(key=t["key"], value=t["value"], effect=TAINT_EFFECTS[t["effect"]]) for t in group.taints
            ],
            # EKS tags the node group's ASG with the same discovery tags itself; stating them here
            # keeps the contract with the autoscaler's --node-group-auto-discovery visible.
            tags={
                **(
                    discovery_tags(environment.cluster_name)
                    if environment.node_autoscaler != karpenter.CONTROLLER
                    else {}
                ),
                "eks-inference/role": group.role,
                "eks-inference/nodegroups-entry": group.entry,
            },
            subnets=subnets,
            max_unavailable=1,
        )
        for addon in network_addons:
            nodegroup.node.add_dependency(addon)
        return nodegroup

    def _node_role(self, entry: NodeGroup) -> iam.Role:
        """The nodes' IAM role, one per nodegroups.yaml entry (its per-zone groups share it)."""
        return iam.Role(
            self,
            "NodeRole-" + entry.name,
            description=f"Nodes of {entry.name} ({self.eks_environment.cluster_name})",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name(p) for p in NODE_ROLE_POLICIES],
        )

    def _launch_template(self, entry: NodeGroup) -> ec2.LaunchTemplate:
        """IMDSv2 with one hop, and an encrypted gp3 root volume of the entry's diskSizeGiB."""
        return ec2.LaunchTemplate(
            self,
            "LaunchTemplate-" + entry.name,
            require_imdsv2=True,
            http_put_response_hop_limit=IMDS_HOP_LIMIT,
            http_tokens=ec2.LaunchTemplateHttpTokens.REQUIRED,
            http_endpoint=True,
            block_devices=[
                ec2.BlockDevice(
                    device_name=ROOT_DEVICE,
                    volume=ec2.BlockDeviceVolume.ebs(
                        entry.disk_size_gib,
                        volume_type=ec2.EbsDeviceVolumeType.GP3,
                        encrypted=True,
                        delete_on_termination=True,
                        iops=ROOT_VOLUME_IOPS,
                        throughput=ROOT_VOLUME_THROUGHPUT_MIBPS,
                    ),
                )
            ],
        )

    def _upgrade_policy(self) -> None:
        """UpgradePolicy stated, not left to EKS's default (extended support, billed per cluster-hour)."""
        cfn = cast(eks.CfnCluster, self.cluster.node.default_child)
        cfn.add_property_override("UpgradePolicy", {"SupportType": UPGRADE_SUPPORT_TYPE})

    def _vpc_endpoints(self) -> None:
        """S3 gateway (ECR's layers), interface endpoints for ECR, STS and EKS Pod Identity, in the nodes' subnets."""
        nodes = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)
        self.vpc.add_gateway_endpoint("S3Endpoint", service=ec2.GatewayVpcEndpointAwsService.S3, subnets=[nodes])
        # One security group for every interface endpoint: HTTPS from inside the VPC, nothing out.
        endpoints = ec2.SecurityGroup(
            self,
            "EndpointSecurityGroup",
            vpc=self.vpc,
            description="HTTPS from the VPC to the AWS API interface endpoints",
            allow_all_outbound=False,
        )
        endpoints.add_ingress_rule(ec2.Peer.ipv4(self.vpc.vpc_cidr_block), ec2.Port.tcp(443), "AWS APIs from the VPC")
        for name, service in INTERFACE_ENDPOINTS.items():
            self.vpc.add_interface_endpoint(
                name + "Endpoint",
                service=service,
                subnets=nodes,
                private_dns_enabled=True,
                security_groups=[endpoints],
                open=False,
            )

    def _access_entries(self) -> None:
        """Break-glass admin and CI deploy roles as EKS access entries; their ARNs are stack parameters."""
        admin = cdk.CfnParameter(
            self,
            access.ADMIN_ROLE_PARAMETER,
            type="String",
            allowed_pattern=access.ROLE_ARN.pattern,
            description="IAM role of the break-glass cluster admins (infra.access.<env>.admin_role_arn)",
        )
        deployer = cdk.CfnParameter(
            self,
            access.DEPLOY_ROLE_PARAMETER,
            type="String",
            allowed_pattern=access.ROLE_ARN.pattern,
            description="IAM role CI runs `invoke deploy` as (infra.access.<env>.deploy_role_arn)",
        )
        eks.AccessEntry(
            self,
            "AdminAccess",
            cluster=cast(eks.ICluster, self.cluster),
            principal=admin.value_as_string,
            access_policies=[
                eks.AccessPolicy.from_access_policy_name(
                    access.CLUSTER_ADMIN_POLICY, access_scope_type=eks.AccessScopeType.CLUSTER
                )
            ],
        )
        grant = access.deploy_access(render.render(self.eks_environment.overlay))
        eks.AccessEntry(
            self,
            "DeployAccess",
            cluster=cast(eks.ICluster, self.cluster),
            principal=deployer.value_as_string,
            access_policies=[
                eks.AccessPolicy.from_access_policy_name(
                    grant.policy,
                    access_scope_type=eks.AccessScopeType.CLUSTER
                    if grant.cluster_scope
                    else eks.AccessScopeType.NAMESPACE,
                    namespaces=None if grant.cluster_scope else list(grant.namespaces),
                )
            ],
        )

    def _autoscaler_role(self, environment: Environment) -> iam.Role:
        """The Cluster Autoscaler's IAM role, bound to kube-system/cluster-autoscaler with EKS Pod Identity."""
        role = iam.Role(
            self,
            "AutoscalerRole",
            role_name=environment.autoscaler_role_name,
            description="Cluster Autoscaler of " + environment.cluster_name,
            assumed_by=iam.ServicePrincipal("pods.eks.amazonaws.com"),
        )
        # Pod Identity assumes the role with session tags.
        role.assume_role_policy.add_statements(  # type: ignore[union-attr]
            iam.PolicyStatement(
                actions=["sts:TagSession"],
                principals=[iam.ServicePrincipal("pods.eks.amazonaws.com")],
            )
        )
        tags = discovery_tags(environment.cluster_name)
        policy = iam.ManagedPolicy(
            self,
            "AutoscalerPolicy",
            description="Cluster Autoscaler: discover node groups, scale only this cluster's",
            statements=[
                iam.PolicyStatement(
                    sid="Discover",
                    actions=list(AUTOSCALER_READ_ACTIONS),
                    resources=["*"],  # Describe* actions support no resource-level permissions
                ),
                iam.PolicyStatement(
                    sid="ReadManagedNodegroups",
                    actions=["eks:DescribeNodegroup"],
                    resources=[
                        cdk.Arn.format(
                            cdk.ArnComponents(
                                service="eks",
                                resource="nodegroup",
                                resource_name=f"{environment.cluster_name}/*",
                            ),
                            self,
                        )
                    ],
                ),
                iam.PolicyStatement(
                    sid="ScaleOwnNodegroups",
                    actions=list(AUTOSCALER_WRITE_ACTIONS),
                    resources=[
                        cdk.Arn.format(
                            cdk.ArnComponents(
                                service="autoscaling",
                                resource="autoScalingGroup",
                                resource_name="*",
                                arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
                            ),
                            self,
                        )
                    ],
                    conditions={"StringEquals": {f"aws:ResourceTag/{k}": v for k, v in tags.items()}},
                ),
            ],
        )
        role.add_managed_policy(policy)
        self._pod_identity(
            "AutoscalerPodIdentity", settings.AUTOSCALER_NAMESPACE, settings.AUTOSCALER_SERVICE_ACCOUNT, role
        )
        return role

    def _pod_identity(self, construct_id: str, namespace: str, service_account: str, role: iam.Role) -> None:
        """EKS Pod Identity: `role` for the pods of `namespace`/`service_account`, once the agent add-on is in."""
        eks.CfnPodIdentityAssociation(
            self,
            construct_id,
            cluster_name=self.cluster.cluster_name,
            namespace=namespace,
            service_account=service_account,
            role_arn=role.role_arn,
        ).node.add_dependency(self.node.find_child("PodIdentityAgent"))

    def _karpenter(self, environment: Environment) -> iam.Role:
        """What Karpenter needs from AWS: the node role and its access entry, the discovery tags on the nodes' subnets
        and security group, the SQS interruption queue with its EventBridge rules, and the controller's IAM role
        (EKS Pod Identity, kube-system/karpenter), least privilege: every write is conditioned on this cluster's tags.
        """
        cluster = environment.cluster_name
        for subnet in self.vpc.private_subnets:
            cdk.Tags.of(subnet).add(karpenter.DISCOVERY_TAG, cluster)
        nodes_sg = self._karpenter_node_security_group(cluster)
        cdk.Tags.of(nodes_sg).add(karpenter.DISCOVERY_TAG, cluster)

        node_role = iam.Role(
            self,
            "KarpenterNodeRole",
            role_name=karpenter.node_role_name(cluster),
            description=f"Nodes Karpenter launches for {cluster}",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name(p) for p in NODE_ROLE_POLICIES],
        )
        # The nodes join the cluster through an EC2 Linux access entry (no aws-auth ConfigMap).
        eks.AccessEntry(
            self,
            "KarpenterNodeAccess",
            cluster=cast(eks.ICluster, self.cluster),
            principal=node_role.role_arn,
            access_entry_type=eks.AccessEntryType.EC2_LINUX,
            access_policies=[],
        )

        queue_key = kms.Key(self, "InterruptionQueueKey", enable_key_rotation=True, description="Karpenter queue")
        queue = sqs.Queue(
            self,
            "InterruptionQueue",
            queue_name=environment.interruption_queue,
            # An interruption warning is worth 2 minutes; an older message only drains a node for nothing.
            retention_period=cdk.Duration.minutes(5),
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=queue_key,
            enforce_ssl=True,
        )
        for name, (source, detail_type) in INTERRUPTION_EVENTS.items():
            events.Rule(
                self,
                f"Interruption{name}Rule",
                description=f"{detail_type} -> Karpenter ({cluster})",
                event_pattern=events.EventPattern(source=[source], detail_type=[detail_type]),
                targets=[targets.SqsQueue(queue)],
            )
        # EventBridge encrypts into the queue with its key.
        queue_key.grant_encrypt_decrypt(iam.ServicePrincipal("events.amazonaws.com"))

        role = iam.Role(
            self,
            "KarpenterControllerRole",
            role_name=karpenter.controller_role_name(cluster),
            description="Karpenter of " + cluster,
            assumed_by=iam.ServicePrincipal("pods.eks.amazonaws.com"),
        )
        role.assume_role_policy.add_statements(  # type: ignore[union-attr]
            iam.PolicyStatement(actions=["sts:TagSession"], principals=[iam.ServicePrincipal("pods.eks.amazonaws.com")])
        )
        iam.ManagedPolicy(
            self,
            "KarpenterControllerPolicy",
            description="Karpenter: launch, tag and terminate only this cluster's NodePool instances",
            statements=self._karpenter_statements(cluster, node_role, queue),
            roles=[role],
        )
        queue_key.grant_decrypt(role)
        self._pod_identity("KarpenterPodIdentity", karpenter.NAMESPACE, karpenter.CONTROLLER, role)
        cdk.CfnOutput(self, "InterruptionQueueName", value=queue.queue_name)
        cdk.CfnOutput(self, "KarpenterNodeRoleName", value=node_role.role_name)
        return role

    def _karpenter_node_security_group(self, cluster: str) -> ec2.SecurityGroup:
        """The security group of Karpenter's nodes: all traffic with each other and with the cluster security group
        (the control plane and the managed nodes), as a managed node group's nodes have through that group."""
        group = ec2.SecurityGroup(
            self,
            "KarpenterNodeSecurityGroup",
            vpc=self.vpc,
            description=f"Nodes Karpenter launches for {cluster}",
            allow_all_outbound=True,
        )
        group.add_ingress_rule(group, ec2.Port.all_traffic(), "node to node")
        cluster_sg = ec2.SecurityGroup.from_security_group_id(
            self, "ClusterSecurityGroupRef", self.cluster.cluster_security_group_id, mutable=False
        )
        group.add_ingress_rule(cluster_sg, ec2.Port.all_traffic(), "control plane and managed nodes to nodes")
        ec2.CfnSecurityGroupIngress(
            self,
            "ClusterFromKarpenterNodes",
            group_id=self.cluster.cluster_security_group_id,
            source_security_group_id=group.security_group_id,
            ip_protocol="-1",
            description="Karpenter's nodes to the control plane and managed nodes",
        )
        return group

    def _karpenter_statements(self, cluster: str, node_role: iam.Role, queue: sqs.Queue) -> list[iam.PolicyStatement]:
        def arn(service: str, resource: str, name: str = "*", account: bool = True, region: bool = True) -> str:
            return cdk.Arn.format(
                cdk.ArnComponents(
                    service=service,
                    resource=resource,
                    resource_name=name,
                    account=None if account else "",
                    region=None if region else "",
                ),
                self,
            )

        owned = {
            f"aws:RequestTag/kubernetes.io/cluster/{cluster}": "owned",
            "aws:RequestTag/eks:eks-cluster-name": cluster,
        }
        resource_owned = {f"aws:ResourceTag/kubernetes.io/cluster/{cluster}": "owned"}
        launched = [
            arn("ec2", r)
            for r in ("fleet", "instance", "volume", "network-interface", "launch-template", "spot-instances-request")
        ]
        profile = arn("iam", "instance-profile", region=False)
        return [
            iam.PolicyStatement(
                sid="AllowScopedEC2InstanceAccessActions",
                actions=list(KARPENTER_LAUNCH_ACTIONS),
                resources=[
                    arn("ec2", "image", account=False),
                    arn("ec2", "snapshot", account=False),
                    arn("ec2", "security-group"),
                    arn("ec2", "subnet"),
                    arn("ec2", "capacity-reservation"),
                ],
            ),
            iam.PolicyStatement(
                sid="AllowScopedEC2LaunchTemplateAccessActions",
                actions=list(KARPENTER_LAUNCH_ACTIONS),
                resources=[arn("ec2", "launch-template")],
                conditions={"StringEquals": resource_owned, "StringLike": {f"aws:ResourceTag/{NODEPOOL_TAG}": "*"}},
            ),
            iam.PolicyStatement(
                sid="AllowScopedEC2InstanceActionsWithTags",
                actions=[*KARPENTER_LAUNCH_ACTIONS, "ec2:CreateLaunchTemplate"],
                resources=launched,
                conditions={"StringEquals": owned, "StringLike": {f"aws:RequestTag/{NODEPOOL_TAG}": "*"}},
            ),
            iam.PolicyStatement(
                sid="AllowScopedResourceCreationTagging",
                actions=["ec2:CreateTags"],
                resources=launched,
                conditions={
                    "StringEquals": {**owned, "ec2:CreateAction": [*KARPENTER_LAUNCH_ACTIONS, "CreateLaunchTemplate"]},
                    "StringLike": {f"aws:RequestTag/{NODEPOOL_TAG}": "*"},
                },
            ),
            iam.PolicyStatement(
                sid="AllowScopedResourceTagging",
                actions=["ec2:CreateTags"],
                resources=[arn("ec2", "instance")],
                conditions={
                    "StringEquals": resource_owned,
                    "StringLike": {f"aws:ResourceTag/{NODEPOOL_TAG}": "*"},
                    "StringEqualsIfExists": {"aws:RequestTag/eks:eks-cluster-name": cluster},
                    "ForAllValues:StringEquals": {
                        "aws:TagKeys": ["eks:eks-cluster-name", "karpenter.sh/nodeclaim", "Name"]
                    },
                },
            ),
            iam.PolicyStatement(
                sid="AllowScopedDeletion",
                actions=["ec2:TerminateInstances", "ec2:DeleteLaunchTemplate"],
                resources=[arn("ec2", "instance"), arn("ec2", "launch-template")],
                conditions={"StringEquals": resource_owned, "StringLike": {f"aws:ResourceTag/{NODEPOOL_TAG}": "*"}},
            ),
            iam.PolicyStatement(
                sid="AllowRegionalReadActions",
                actions=list(KARPENTER_READ_ACTIONS),
                resources=["*"],  # Describe* actions support no resource-level permissions
                conditions={"StringEquals": {"aws:RequestedRegion": self.region}},
            ),
            iam.PolicyStatement(
                sid="AllowSSMReadActions",
                actions=["ssm:GetParameter"],
                resources=[arn("ssm", "parameter", "aws/service/*", account=False)],
            ),
            iam.PolicyStatement(
                sid="AllowPricingReadActions",
                actions=["pricing:GetProducts"],
                resources=["*"],  # the Price List API has no resources
            ),
            iam.PolicyStatement(
                sid="AllowInterruptionQueueActions", actions=list(KARPENTER_QUEUE_ACTIONS), resources=[queue.queue_arn]
            ),
            iam.PolicyStatement(
                sid="AllowPassingInstanceRole",
                actions=["iam:PassRole"],
                resources=[node_role.role_arn],
                conditions={"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
            ),
            iam.PolicyStatement(
                sid="AllowScopedInstanceProfileCreationActions",
                actions=["iam:CreateInstanceProfile"],
                resources=[profile],
                conditions={
                    "StringEquals": {**owned, "aws:RequestTag/topology.kubernetes.io/region": self.region},
                    "StringLike": {f"aws:RequestTag/{NODECLASS_TAG}": "*"},
                },
            ),
            iam.PolicyStatement(
                sid="AllowScopedInstanceProfileActions",
                actions=list(KARPENTER_INSTANCE_PROFILE_ACTIONS),
                resources=[profile],
                conditions={
                    "StringEquals": {**resource_owned, "aws:ResourceTag/topology.kubernetes.io/region": self.region},
                    "StringLike": {f"aws:ResourceTag/{NODECLASS_TAG}": "*"},
                },
            ),
            iam.PolicyStatement(
                sid="AllowInstanceProfileReadActions", actions=["iam:GetInstanceProfile"], resources=[profile]
            ),
            iam.PolicyStatement(
                sid="AllowAPIServerEndpointDiscovery",
                actions=["eks:DescribeCluster"],
                resources=[arn("eks", "cluster", cluster)],
            ),
        ]
