"""The Cluster Autoscaler itself, with its kwok cloud provider, scaling the node groups of nodegroups.yaml.

Needs a `cluster-autoscaler` binary built with `-tags kwok` (on PATH, or named by
EKS_INFERENCE_CLUSTER_AUTOSCALER). Why these skip in CI, honestly: the Go module proxy answers 403 for
k8s.io/autoscaler/cluster-autoscaler at every version (tools.toml, `invoke tools.doctor` records it), upstream
publishes only container images, and no registry is reachable here; Karpenter's behaviour tests
(test_karpenter.py) are the node autoscaling tests that run in CI. Where the binary exists they run for real.
The autoscaler runs as a local process against its own simulated control plane with the flags of the rendered
eks-prod Deployment (`autoscaler_flags`: nothing restated here), its durations shortened to seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ops import core
from ops.images import versions as image_versions
from ops.k8s import nodegroups, objects, render
from ops.k8s.nodegroups import load_nodegroups, managed_nodegroups
from ops.k8s.sim import SimCluster, node_manifest, wait_until

BINARY_ENV = "EKS_INFERENCE_CLUSTER_AUTOSCALER"
NAMESPACE = "ca-test"
GROUP_LABEL = "eks.amazonaws.com/nodegroup"
# Groups template nodes for the kwok provider. An annotation only templates carry: grouping by the node
# group label would also count the pre-created node into cpu-general's target size (an "upcoming" node
# that never comes, which the autoscaler then waits for instead of scaling up).
GROUP_ANNOTATION = "eks-inference.io/kwok-node-group"
# kwok provider annotations on template nodes (cloudprovider/kwok/kwok_constants.go).
MIN_COUNT = "cluster-autoscaler.kwok.nodegroup/min-count"
MAX_COUNT = "cluster-autoscaler.kwok.nodegroup/max-count"
DESIRED_COUNT = "cluster-autoscaler.kwok.nodegroup/desired-count"


def autoscaler_binary() -> str | None:
    return os.environ.get(BINARY_ENV) or shutil.which("cluster-autoscaler")


pytestmark = [pytest.mark.cluster]
needs_binary = pytest.mark.skipif(
    autoscaler_binary() is None,
    reason=(
        "no cluster-autoscaler built with -tags kwok on PATH or in $EKS_INFERENCE_CLUSTER_AUTOSCALER (the Go module "
        "proxy refuses k8s.io/autoscaler/cluster-autoscaler; docs/manifests.md, 'The Cluster Autoscaler on AWS')"
    ),
)
# Flags of the rendered Deployment that only make sense on AWS, and what the kwok run uses instead.
AWS_ONLY_FLAGS = {
    "--cloud-provider": "--cloud-provider=kwok",
    "--node-group-auto-discovery": None,  # ASG tags; the kwok provider reads its templates ConfigMap
}
# Durations cut to seconds (the rendered values are minutes); every other flag is the rendered one.
SHORT_DURATIONS = {
    "--scale-down-delay-after-add": "10s",
    "--scale-down-unneeded-time": "10s",
    "--max-node-provision-time": "2m",
}
# What a local process needs and a pod does not.
LOCAL_FLAGS = (
    "--leader-elect=false",
    "--scan-interval=2s",
    "--scale-down-delay-after-delete=0s",
    "--scale-down-delay-after-failure=0s",
)


def autoscaler_flags(rendered: list[dict[str, Any]] | None = None) -> list[str]:
    """The rendered eks-prod cluster-autoscaler's flags, for a local kwok run: AWS-only flags swapped, durations
    shortened to seconds, every other flag (expander, balancing, pod rules, utilization threshold) as rendered."""
    (dep,) = objects.find(
        rendered if rendered is not None else render.render("eks-prod"), "Deployment", "cluster-autoscaler"
    )
    command = dep["spec"]["template"]["spec"]["containers"][0]["command"]
    out = []
    for arg in command[1:]:  # [0] is the binary
        name = arg.split("=", 1)[0]
        if name in AWS_ONLY_FLAGS:
            if AWS_ONLY_FLAGS[name]:
                out.append(str(AWS_ONLY_FLAGS[name]))
        elif name in SHORT_DURATIONS:
            out.append(f"{name}={SHORT_DURATIONS[name]}")
        else:
            out.append(arg)
    return [*out, *LOCAL_FLAGS]


def test_the_local_run_takes_the_rendered_flags() -> None:
    """Runs without the binary: the flags the behaviour tests would start it with come from the manifest."""
    rendered = render.render("eks-prod")
    flags = autoscaler_flags(rendered)
    assert "--cloud-provider=kwok" in flags
    assert not any(f.startswith(("--cloud-provider=aws", "--node-group-auto-discovery")) for f in flags)
    for rendered_flag in (
        "--expander=least-waste",
        "--balance-similar-node-groups",
        "--scale-down-utilization-threshold=0.5",
    ):
        assert rendered_flag in flags
    (dep,) = objects.find(rendered, "Deployment", "cluster-autoscaler")
    dep["spec"]["template"]["spec"]["containers"][0]["command"].append("--expander=random")
    assert "--expander=random" in autoscaler_flags(rendered)  # a manifest change reaches the test run


def provider_config() -> dict[str, Any]:
    """kwok-provider-config: template nodes from a ConfigMap, grouped by the EKS node group label."""
    gpu_types: dict[str, dict[str, Any]] = {g["accelerator_label"]: {} for g in image_versions.load_versions()["gpus"]}
    return {
        "apiVersion": "v1alpha1",
        "readNodesFrom": "configmap",
        "nodegroups": {"fromNodeAnnotationKey": GROUP_ANNOTATION},
        "nodes": {
            "skipTaint": True,
            "gpuConfig": {"gpuLabelKey": nodegroups.ACCELERATOR_LABEL, "availableGPUTypes": gpu_types},
        },
        "configmap": {"name": "kwok-provider-templates", "key": "templates"},
    }


def template_nodes() -> dict[str, Any]:
    """One template Node per node group of nodegroups.yaml (labels, taints, capacity, maxSize).

    Every group starts at zero autoscaler-managed nodes with a minimum of zero: the kwok provider cannot
    adopt nodes it did not create, so cpu-general's minimum (2) stands as the pre-created node instead.
    """
    items = []
    # One template per EKS managed node group: gpu-t4 is one per zone, as production balances them.
    for group in managed_nodegroups().values():
        node = node_manifest(group, 0)
        node["metadata"]["name"] = f"{group.name}-template"
        node["metadata"]["annotations"] = {
            GROUP_ANNOTATION: group.name,
            MIN_COUNT: "0",
            DESIRED_COUNT: "0",
            MAX_COUNT: str(group.max_size),
        }
        items.append(node)
    return {"apiVersion": "v1", "kind": "List", "items": items}


@pytest.fixture(scope="module")
def ca_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimCluster]:
    """A control plane of its own: one CPU node that the autoscaler does not manage, no GPU node."""
    with SimCluster.private(tmp_path_factory.mktemp("kwok-ca"), "eks-sim-ca", {"cpu-general": 1}).running() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def autoscaler(ca_sim: SimCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """cluster-autoscaler --cloud-provider=kwok, running locally against the simulated cluster; yields its log."""
    ca_sim.kubectl("create", "namespace", NAMESPACE)
    configmaps = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "kwok-provider-config", "namespace": "kube-system"},
            "data": {"config": yaml.safe_dump(provider_config())},
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "kwok-provider-templates", "namespace": "kube-system"},
            "data": {"templates": yaml.safe_dump(template_nodes())},
        },
    ]
    ca_sim.kubectl("apply", "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": configmaps}))
    log = tmp_path_factory.mktemp("ca") / "cluster-autoscaler.log"
    # Production's flags (components/cluster-autoscaler, rendered), with timings in seconds.
    argv = [str(autoscaler_binary()), f"--kubeconfig={ca_sim.kubeconfig}", *autoscaler_flags()]
    # The kwok provider's own client reads $KUBECONFIG and its current context (KWOK_PROVIDER_MODE=local).
    ca_sim.kubectl("config", "use-context", ca_sim.context)
    env = {
        **os.environ,
        "KUBECONFIG": str(ca_sim.kubeconfig),
        "POD_NAMESPACE": "kube-system",
        "KWOK_PROVIDER_MODE": "local",
    }
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            time.sleep(5)
            assert proc.poll() is None, log.read_text()[-3000:]
            yield log
        finally:
            core.stop(proc)


def nodes_of(sim: SimCluster, group: str) -> list[str]:
    """Nodes of a nodegroups.yaml entry (every zone's managed group of a per-zone one)."""
    names = ",".join(m.name for m in load_nodegroups()[group].managed())
    out = sim.kubectl("get", "nodes", "-l", f"{GROUP_LABEL} in ({names})", "-o", "jsonpath={.items[*].metadata.name}")
    return [n for n in out.split() if not n.endswith("-template")]


def pod_from(deployment: str, name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A bare Pod with the scheduling shape of a rendered eks-prod Deployment (requests, affinity, tolerations)."""
    (dep,) = objects.find(render.render("eks-prod"), "Deployment", deployment)
    spec = dep["spec"]["template"]["spec"]
    container = spec["containers"][0]
    resources = {k: dict(v) for k, v in container["resources"].items()}
    for kind, values in (overrides or {}).items():
        resources[kind].update(values)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"test": "ca"}},
        "spec": {
            "containers": [{"name": "app", "image": container["image"], "resources": resources}],
            "affinity": spec.get("affinity", {}),
            "tolerations": spec.get("tolerations", []),
        },
    }


def create(sim: SimCluster, *pods: dict[str, Any]) -> None:
    sim.kubectl("apply", "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(pods)}))


def running_on(sim: SimCluster, pod: str) -> str:
    out = sim.kubectl("get", "pod", pod, "-n", NAMESPACE, "-o", "jsonpath={.status.phase} {.spec.nodeName}")
    phase, _, node = out.partition(" ")
    return node if phase == "Running" else ""


@needs_binary
def test_a_pending_cpu_pod_scales_the_cpu_group_never_the_gpu_group(ca_sim: SimCluster, autoscaler: Path) -> None:
    cpu_before = nodes_of(ca_sim, "cpu-general")
    # Two 3-CPU pods: one fits the existing node (3920m allocatable), the other needs a new node.
    big = {"requests": {"cpu": "3"}, "limits": {"cpu": "3"}}
    create(ca_sim, *(pod_from("text-classifier", f"cpu-{i}", big) for i in range(2)))
    wait_until(
        lambda: all(running_on(ca_sim, f"cpu-{i}") for i in range(2)),
        180,
        interval_s=2,
        what="both CPU pods running (one on a node the autoscaler added)",
    )
    added = set(nodes_of(ca_sim, "cpu-general")) - set(cpu_before)
    assert len(added) == 1, autoscaler.read_text()[-3000:]
    assert nodes_of(ca_sim, "gpu-t4") == []
    assert {running_on(ca_sim, f"cpu-{i}") for i in range(2)} <= set(cpu_before) | added


@needs_binary
def test_a_pending_gpu_pod_scales_the_gpu_group_up_from_zero(ca_sim: SimCluster, autoscaler: Path) -> None:
    assert nodes_of(ca_sim, "gpu-t4") == []
    create(ca_sim, pod_from("image-classifier", "gpu-0"))
    node = wait_until(lambda: running_on(ca_sim, "gpu-0"), 180, interval_s=2, what="the GPU pod running")
    assert node in nodes_of(ca_sim, "gpu-t4"), autoscaler.read_text()[-3000:]
    assert len(nodes_of(ca_sim, "gpu-t4")) == 1


@needs_binary
def test_nodes_are_removed_after_their_pods_are_gone(ca_sim: SimCluster, autoscaler: Path) -> None:
    ca_sim.kubectl("delete", "pods", "-n", NAMESPACE, "-l", "test=ca", "--wait=true")
    wait_until(lambda: nodes_of(ca_sim, "gpu-t4") == [], 180, interval_s=3, what="gpu-t4 back at zero nodes")
    # The CPU node it added goes too; the pre-created one (not the autoscaler's) stays.
    wait_until(
        lambda: nodes_of(ca_sim, "cpu-general") == ["cpu-general-0"],
        180,
        interval_s=3,
        what="cpu-general back to its pre-created node",
    )
