"""Karpenter itself (its kwok cloud provider build, tools.toml karpenter-kwok) launching nodes on the simulated cluster
from the NodePools that eks-staging renders (generated from nodegroups.yaml).

The controller runs as a local process against a control plane of its own (kube-apiserver, etcd, scheduler and kwok
from the tool cache), with the settings of the rendered Deployment. What differs from EKS, and only that: the
NodePools point at a KWOKNodeClass instead of the EC2NodeClass, the kwok instance types are generated from
nodegroups.yaml (ops.k8s.karpenter.kwok_instance_types), and consolidateAfter is cut to seconds (CONSOLIDATE_AFTER).
Nothing skips: the binaries are required tools (`invoke tools.install` builds them).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ops import core
from ops.k8s import budget, karpenter, objects, render
from ops.k8s.nodegroups import GPU_TAINT_KEY, ZONE_LABEL, load_nodegroups
from ops.k8s.sim import SimCluster, wait_until
from ops.toolchain import tools

pytestmark = [pytest.mark.cluster]

OVERLAY = "eks-staging"  # the EKS overlay that chooses Karpenter
NAMESPACE = "karpenter-test"
# The rendered pools wait 10 min (GPU) and 5 min (CPU); here both wait this long, so that a test can see the
# nodes stay for it and go after it.
CONSOLIDATE_AFTER_S = 20
# Karpenter's disruption loop: it polls every 10 s and validates a consolidation for 15 s before it acts, and the
# GPU pool's budget lets one node go at a time; each node may take this long past consolidateAfter.
DISRUPTION_SLACK_S = 45


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def staging() -> list[dict[str, Any]]:
    return render.render(OVERLAY)


@pytest.fixture(scope="module")
def karp_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimCluster]:
    """A control plane of its own with one managed CPU node (where the controller would run), no GPU node."""
    root = tmp_path_factory.mktemp("kwok-karpenter")
    with SimCluster.private(root, "eks-sim-karpenter", {"cpu-general": 1}).running() as cluster:
        yield cluster


def apply(sim: SimCluster, items: list[dict[str, Any]]) -> None:
    sim.kubectl("apply", "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))


@pytest.fixture(scope="module")
def controller(
    karp_sim: SimCluster, staging: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """The CRDs, the rendered NodePools (on KWOKNodeClasses) and the Karpenter controller; yields its log."""
    crds = karpenter.kwok_crds()
    apply(karp_sim, crds)
    karp_sim.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{c['metadata']['name']}" for c in crds)
    )
    pools = karpenter.sim_objects(staging)
    for pool in objects.find(pools, "NodePool"):
        pool["spec"]["disruption"]["consolidateAfter"] = f"{CONSOLIDATE_AFTER_S}s"
    apply(karp_sim, pools)
    for node_class in objects.find(pools, karpenter.KWOK_NODECLASS_KIND):
        # On EKS the EC2NodeClass controller sets Ready once it has resolved the AMI, subnets and security groups;
        # a KWOKNodeClass has nothing to resolve.
        ready = {
            "type": "Ready",
            "status": "True",
            "reason": "Ready",
            "message": "",
            "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        karp_sim.kubectl(
            "patch", "kwoknodeclass", node_class["metadata"]["name"], "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": {"conditions": [ready]}}),
        )  # fmt: skip
    karp_sim.kubectl("create", "namespace", NAMESPACE)
    root = tmp_path_factory.mktemp("karpenter")
    instance_types = root / "instance-types.json"
    instance_types.write_text(karpenter.kwok_instance_types())
    log = root / "karpenter.log"
    karp_sim.kubectl("config", "use-context", karp_sim.context)
    env = {
        **os.environ,
        # The rendered Deployment's own settings (feature gates, batching windows, log level) ...
        **karpenter.controller_env(staging),
        # ... and what a local process needs instead of a pod's: the cluster, its namespace, loopback-free ports.
        "KUBECONFIG": str(karp_sim.kubeconfig),
        "SYSTEM_NAMESPACE": "kube-system",
        "DISABLE_LEADER_ELECTION": "true",
        "METRICS_PORT": str(_free_port()),
        "HEALTH_PROBE_PORT": str(_free_port()),
        "INSTANCE_TYPES_FILE_PATH": str(instance_types),
        "LOG_LEVEL": "debug",
    }
    with log.open("w") as out:
        proc = subprocess.Popen([str(tools.ensure("karpenter-kwok"))], stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            wait_until(
                lambda: all(
                    _condition(karp_sim, "nodepool", p["metadata"]["name"], "Ready") == "True"
                    for p in objects.find(pools, "NodePool")
                ),
                90,
                interval_s=1,
                what="every NodePool Ready",
            )
            assert proc.poll() is None, log.read_text()[-3000:]
            yield log
        finally:
            core.stop(proc)


def _condition(sim: SimCluster, kind: str, name: str, condition: str) -> str:
    return sim.kubectl(
        "get", kind, name, "-o", f"jsonpath={{.status.conditions[?(@.type=='{condition}')].status}}", check=False
    ).strip()


def karpenter_nodes(sim: SimCluster, pool: str | None = None) -> list[dict[str, Any]]:
    """Nodes Karpenter launched (of one NodePool)."""
    selector = f"{karpenter.NODEPOOL_LABEL}={pool}" if pool else karpenter.NODEPOOL_LABEL
    return list(json.loads(sim.kubectl("get", "nodes", "-l", selector, "-o", "json"))["items"])


def pod_from(
    staging: list[dict[str, Any]], deployment: str, name: str, resources: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A bare Pod with the scheduling shape of a rendered eks-staging Deployment: its labels, requests, node
    affinity, tolerations and topology spread."""
    (dep,) = objects.find(staging, "Deployment", deployment)
    spec = dep["spec"]["template"]["spec"]
    container = spec["containers"][0]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {**dep["spec"]["template"]["metadata"]["labels"], "test": "karpenter"},
        },
        "spec": {
            "containers": [
                {"name": "app", "image": container["image"], "resources": resources or container["resources"]}
            ],
            "affinity": spec.get("affinity", {}),
            "tolerations": spec.get("tolerations", []),
            "topologySpreadConstraints": spec.get("topologySpreadConstraints", []),
            "terminationGracePeriodSeconds": 0,
        },
    }


def running_on(sim: SimCluster, pod: str) -> str:
    out = sim.kubectl(
        "get", "pod", pod, "-n", NAMESPACE, "-o", "jsonpath={.status.phase} {.spec.nodeName}", check=False
    )
    phase, _, node = out.partition(" ")
    return node if phase == "Running" else ""


def node_of(sim: SimCluster, name: str) -> dict[str, Any]:
    return dict(json.loads(sim.kubectl("get", "node", name, "-o", "json")))


def test_a_pending_gpu_pod_launches_a_gpu_node_from_zero(
    karp_sim: SimCluster, controller: Path, staging: list[dict[str, Any]]
) -> None:
    assert karpenter_nodes(karp_sim) == []
    started = time.monotonic()
    apply(karp_sim, [pod_from(staging, budget.GPU_SERVICE, "gpu-0")])
    name = wait_until(lambda: running_on(karp_sim, "gpu-0"), 120, interval_s=1, what="the GPU pod running")
    print(f"GPU pod Running on a new node {time.monotonic() - started:.1f} s after it was created")
    node = node_of(karp_sim, name)
    group = load_nodegroups()["gpu-t4"]
    labels = node["metadata"]["labels"]
    assert labels[karpenter.NODEPOOL_LABEL] == "gpu-t4", controller.read_text()[-3000:]
    # nodegroups.yaml's contract: the accelerator and workload-class labels, the GPU taint, one GPU.
    assert {k: labels.get(k) for k in karpenter.pool_labels(group)} == karpenter.pool_labels(group)
    assert labels[karpenter.CAPACITY_TYPE_LABEL] == karpenter.ON_DEMAND
    assert labels["node.kubernetes.io/instance-type"].split(".")[0] in group.families
    assert labels[ZONE_LABEL] in group.zones
    taints = [
        {k: t[k] for k in ("key", "value", "effect")}
        for t in node["spec"].get("taints", [])
        if t["key"] == GPU_TAINT_KEY
    ]
    assert taints == [dict(t) for t in group.taints]
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "1"
    assert [n["metadata"]["name"] for n in karpenter_nodes(karp_sim)] == [name]


def test_a_pending_cpu_pod_never_makes_a_gpu_node(
    karp_sim: SimCluster, controller: Path, staging: list[dict[str, Any]]
) -> None:
    gpu_before = {n["metadata"]["name"] for n in karpenter_nodes(karp_sim, "gpu-t4")}
    # 3 CPUs: more than the managed node has left once one such pod runs there, so the second needs a new node.
    big = {"requests": {"cpu": "3", "memory": "1Gi"}, "limits": {"cpu": "3", "memory": "1Gi"}}
    apply(karp_sim, [pod_from(staging, "text-classifier", f"cpu-{i}", big) for i in range(2)])
    wait_until(
        lambda: all(running_on(karp_sim, f"cpu-{i}") for i in range(2)), 120, interval_s=1, what="both CPU pods running"
    )
    cpu_nodes = {n["metadata"]["name"] for n in karpenter_nodes(karp_sim, "cpu-general")}
    assert len(cpu_nodes) == 1, controller.read_text()[-3000:]
    assert {n["metadata"]["name"] for n in karpenter_nodes(karp_sim, "gpu-t4")} == gpu_before
    assert {running_on(karp_sim, f"cpu-{i}") for i in range(2)} <= cpu_nodes | {"cpu-general-0"}
    claims = json.loads(karp_sim.kubectl("get", "nodeclaims", "-o", "json"))["items"]
    assert sorted(c["metadata"]["labels"][karpenter.NODEPOOL_LABEL] for c in claims) == ["cpu-general", "gpu-t4"]


def test_zone_spread_pods_get_nodes_in_the_zones_the_spread_asks_for(
    karp_sim: SimCluster, controller: Path, staging: list[dict[str, Any]]
) -> None:
    (dep,) = objects.find(staging, "Deployment", budget.GPU_SERVICE)
    (spread,) = [
        t for t in dep["spec"]["template"]["spec"]["topologySpreadConstraints"] if t["topologyKey"] == ZONE_LABEL
    ]
    assert spread["whenUnsatisfiable"] == "DoNotSchedule"
    zones = set(load_nodegroups()["gpu-t4"].zones)
    apply(karp_sim, [pod_from(staging, budget.GPU_SERVICE, f"gpu-{i}") for i in (1, 2)])
    wait_until(
        lambda: all(running_on(karp_sim, f"gpu-{i}") for i in range(3)),
        120,
        interval_s=1,
        what="three GPU pods running",
    )
    placed = {running_on(karp_sim, f"gpu-{i}") for i in range(3)}
    pod_zones = [node_of(karp_sim, n)["metadata"]["labels"][ZONE_LABEL] for n in placed]
    # maxSkew 1 over three zones with three pods: one in each, so Karpenter launched into each zone.
    assert sorted(pod_zones) == sorted(zones), controller.read_text()[-3000:]
    assert len(karpenter_nodes(karp_sim, "gpu-t4")) == 3


def test_nodes_are_consolidated_away_after_consolidate_after(karp_sim: SimCluster, controller: Path) -> None:
    launched = {n["metadata"]["name"] for n in karpenter_nodes(karp_sim)}
    assert len(launched) == 4  # three GPU nodes and one CPU node from the tests before
    karp_sim.kubectl("delete", "pods", "-n", NAMESPACE, "-l", "test=karpenter", "--wait=true")
    emptied = time.monotonic()
    # Not before consolidateAfter: an empty node stays that long (a new pod in that time would reuse it).
    time.sleep(CONSOLIDATE_AFTER_S * 0.75)
    assert {n["metadata"]["name"] for n in karpenter_nodes(karp_sim)} == launched
    deadline = CONSOLIDATE_AFTER_S + DISRUPTION_SLACK_S * len(launched)
    wait_until(
        lambda: karpenter_nodes(karp_sim) == [],
        deadline - (time.monotonic() - emptied),
        interval_s=2,
        what=f"every Karpenter node gone (consolidateAfter {CONSOLIDATE_AFTER_S} s + {DISRUPTION_SLACK_S} s a node)",
    )
    print(f"{len(launched)} empty nodes consolidated away {time.monotonic() - emptied:.1f} s after their pods went")
    # The managed node is not Karpenter's to remove.
    assert karp_sim.kubectl("get", "node", "cpu-general-0", "-o", "name").strip() == "node/cpu-general-0"


def test_past_the_gpu_limit_pods_stay_pending_and_say_why(
    karp_sim: SimCluster, controller: Path, staging: list[dict[str, Any]]
) -> None:
    (pool,) = objects.find(staging, "NodePool", "gpu-t4")
    limit = int(pool["spec"]["limits"]["nvidia.com/gpu"])
    assert limit == load_nodegroups()["gpu-t4"].total_max_size  # one GPU a node
    names = [f"limit-{i}" for i in range(limit + 1)]
    apply(karp_sim, [pod_from(staging, budget.GPU_SERVICE, n) for n in names])
    wait_until(
        lambda: sum(bool(running_on(karp_sim, n)) for n in names) == limit,
        180,
        interval_s=2,
        what=f"{limit} GPU pods running (the limit)",
    )
    (pending,) = [n for n in names if not running_on(karp_sim, n)]

    # Karpenter's own words on the pod: no NodePool may launch for it, because of the limit.
    def reason() -> str:
        events = karp_sim.kubectl(
            "get", "events", "-n", NAMESPACE, "--field-selector", f"involvedObject.name={pending}",
            "-o", "jsonpath={range .items[*]}{.source.component} {.reason}: {.message}{'\\n'}{end}",
        )  # fmt: skip
        return next((line for line in events.splitlines() if "limit" in line.lower() and "karpenter" in line), "")

    found = wait_until(reason, 60, interval_s=2, what=f"an event on {pending} naming the limit")
    print(f"pending pod {pending}: {found}")
    assert "gpu-t4" in found
    time.sleep(10)
    assert len(karpenter_nodes(karp_sim, "gpu-t4")) == limit
    assert not running_on(karp_sim, pending)
