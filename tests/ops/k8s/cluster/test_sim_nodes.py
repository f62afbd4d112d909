"""The simulated nodes mirror manifests/nodegroups.yaml and are Ready, as the live apiserver reports them."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import pytest

from ops.k8s.nodegroups import NODEGROUP_LABEL, load_nodegroups, managed_nodegroups
from ops.k8s.sim import SimCluster

pytestmark = pytest.mark.cluster


def live_nodes(sim: SimCluster) -> list[dict[str, Any]]:
    return list(json.loads(sim.kubectl("get", "nodes", "-o", "json"))["items"])


def test_every_node_mirrors_its_node_group(sim: SimCluster) -> None:
    groups = load_nodegroups()
    managed = managed_nodegroups()
    nodes = live_nodes(sim)
    by_group: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for node in nodes:
        labels = node["metadata"]["labels"]
        group = managed[labels[NODEGROUP_LABEL]]  # per zone for gpu-t4: gpu-t4-us-east-1a, ...
        by_group[group.entry].append(node)
        assert group.labels.items() <= labels.items()
        assert labels["topology.kubernetes.io/zone"] in group.zones
        taints = [{k: t[k] for k in ("key", "value", "effect")} for t in node["spec"].get("taints", [])]
        assert taints == [dict(t) for t in group.taints]
        assert node["status"]["allocatable"] == group.allocatable
        assert node["status"]["capacity"] == group.capacity
    assert {g: len(ns) for g, ns in by_group.items()} == sim.node_counts
    for name, members in by_group.items():
        zones = {n["metadata"]["labels"]["topology.kubernetes.io/zone"] for n in members}
        assert len(zones) == min(len(members), len(groups[name].zones)), f"{name} not spread over zones"
        assert groups[name].total_min_size <= len(members) <= groups[name].total_max_size
    assert {m["metadata"]["labels"][NODEGROUP_LABEL] for m in by_group["gpu-t4"]} == {
        "gpu-t4-us-east-1a",
        "gpu-t4-us-east-1b",
        "gpu-t4-us-east-1c",
    }


def test_nodes_are_ready_and_kept_alive_by_kwok(sim: SimCluster) -> None:
    for node in live_nodes(sim):
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}
        assert ready["Ready"] == "True", node["metadata"]["name"]
        assert node["status"]["nodeInfo"]["kubeletVersion"]  # filled in by kwok's node-initialize stage
    leases = json.loads(sim.kubectl("get", "leases", "-n", "kube-node-lease", "-o", "json"))["items"]
    assert {lease["metadata"]["name"] for lease in leases} >= {n["metadata"]["name"] for n in live_nodes(sim)}
