"""The simulated EKS cluster: a real control plane started by kwokctl, with kwok nodes mirroring nodegroups.yaml."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops import core
from ops.core import cache_root, console
from ops.k8s.deploy import MUTATING_VERBS
from ops.k8s.nodegroups import ZONE_LABEL, NodeGroup, load_nodegroups
from ops.toolchain import tools

REGION = "us-east-1"
# kwok's controller only fakes kubelets for nodes carrying this annotation.
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
CONTROL_PLANE_TOOLS = (
    "kwokctl",
    "kwok",
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
)


def node_manifest(group: NodeGroup, index: int) -> dict[str, Any]:
    """A fake Node for kwok: the group's labels, taints, capacity and a zone spread round-robin.

    A per-zone entry's node carries its zone's managed group name (eks.amazonaws.com/nodegroup), as EKS sets it.
    """
    zone = group.zones[index % len(group.zones)]
    name = f"{group.name}-{index}"
    managed = next(m for m in group.managed() if zone in m.zones)
    labels = {
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/os": "linux",
        "kubernetes.io/hostname": name,
        "topology.kubernetes.io/region": REGION,
        ZONE_LABEL: zone,
        "type": "kwok",
        **managed.labels,
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {KWOK_NODE_ANNOTATION: "fake"},
        },
        "spec": {"taints": [dict(t) for t in group.taints]},
        "status": {
            "capacity": dict(group.capacity),
            "allocatable": dict(group.allocatable),
        },
    }


# Fake nodes per entry of manifests/nodegroups.yaml, spread over its zones (gpu-t4: one in each zone's group).
# 3 GPU nodes for 2 image-classifier replicas leave one GPU for the rollout's surge pod (maxSurge 1,
# maxUnavailable 0); in production the Cluster Autoscaler adds that node.
NODE_COUNTS = {"cpu-general": 3, "gpu-t4": 3}


@dataclass
class SimCluster:
    """A kwokctl cluster (`--runtime binary`) and the kubeconfig that reaches it.

    The name has no default here: invoke.yaml (cluster.sim.name) states it, next to the contexts `invoke deploy`
    accepts.
    """

    name: str
    node_counts: dict[str, int] = field(default_factory=lambda: dict(NODE_COUNTS))
    workdir: Path = field(default_factory=lambda: cache_root() / "kwok")
    kubeconfig: Path | None = None  # None: kwokctl's default ($KUBECONFIG or ~/.kube/config)

    @classmethod
    def private(cls, root: Path, name: str, node_counts: dict[str, int] | None = None) -> SimCluster:
        """A cluster whose workdir and kubeconfig live under `root` (a test's own, beside any other)."""
        counts = dict(NODE_COUNTS if node_counts is None else node_counts)
        return cls(name=name, node_counts=counts, workdir=root / "workdir", kubeconfig=root / "kubeconfig.yaml")

    @contextmanager
    def running(self, timeout_s: int = 300) -> Iterator[SimCluster]:
        """Up inside the block, torn down (processes and data) after it, whatever happened."""
        try:
            self.up(timeout_s=timeout_s)
            yield self
        finally:
            self.down()

    @property
    def context(self) -> str:
        return f"kwok-{self.name}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["KWOK_WORKDIR"] = str(self.workdir)
        env["KWOK_KUBE_VERSION"] = tools.load_manifest().tools["kube-apiserver"].version
        env["KWOK_KUBECTL_BINARY"] = str(tools.ensure("kubectl"))
        if self.kubeconfig is not None:
            env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True) -> str:
        """Run the pinned kubectl against this cluster's context."""
        cmd = [str(tools.ensure("kubectl")), "--context", self.context, *args]
        proc = core.run(
            cmd,
            input_text=input_text,
            env=self.env(),
            timeout=120,
            ok_codes=(0,) if check else range(256),
            effect=bool(args) and args[0] in MUTATING_VERBS,
        )
        return proc.stdout

    def stage_config(self) -> Path:
        """kwok stages from the kwok module itself (node heartbeat + pods become Ready/Running)."""
        module = Path(tools.go_env()["GOMODCACHE"]) / f"sigs.k8s.io/kwok@{tools.load_manifest().tools['kwok'].version}"
        stage_dirs = [
            module / "kustomize/stage/node/fast",
            module / "kustomize/stage/node/heartbeat-with-lease",
            module / "kustomize/stage/pod/fast",
        ]
        docs = []
        for d in stage_dirs:
            docs += [p.read_text() for p in sorted(d.glob("*.yaml")) if p.name != "kustomization.yaml"]
        if not docs:
            raise FileNotFoundError(f"no kwok stage files under {module}; run `invoke tools.install -n kwok`")
        out = self.workdir / f"stages-{self.name}.yaml"
        if core.is_dry():  # shown in the kwokctl command, not written
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n---\n".join(doc.strip() for doc in docs) + "\n")
        return out

    def is_running(self) -> bool:
        proc = core.run(
            [str(tools.ensure("kwokctl")), "get", "clusters"],
            env=self.env(),
            timeout=60,
            ok_codes=range(256),
            effect=False,
        )
        return self.name in proc.stdout.split()

    def up(self, timeout_s: int = 240) -> None:
        """Create the control plane (idempotent), then the fake nodes, and wait until every node is Ready."""
        binaries = {name: tools.ensure(name) for name in CONTROL_PLANE_TOOLS}
        if not self.is_running():
            cmd = [
                str(binaries["kwokctl"]), "create", "cluster",
                "--name", self.name,
                "--runtime", "binary",
                "--kube-apiserver-binary", str(binaries["kube-apiserver"]),
                "--kube-controller-manager-binary", str(binaries["kube-controller-manager"]),
                "--kube-scheduler-binary", str(binaries["kube-scheduler"]),
                "--kwok-controller-binary", str(binaries["kwok"]),
                "--etcd-binary", str(binaries["etcd"]),
                "--config", str(self.stage_config()),
                "--wait", f"{timeout_s}s",
                "--timeout", f"{timeout_s}s",
            ]  # fmt: skip
            if self.kubeconfig is not None:
                cmd += ["--kubeconfig", str(self.kubeconfig)]
            console.log("[bold]$ " + " ".join(cmd))
            core.run(cmd, env=self.env(), timeout=timeout_s + 60, capture=False)
        self.create_nodes()
        self.wait_nodes_ready(timeout_s)

    def nodes(self) -> list[dict[str, Any]]:
        groups = load_nodegroups()
        return [node_manifest(groups[g], i) for g, count in self.node_counts.items() for i in range(count)]

    def create_nodes(self) -> None:
        manifest = {"apiVersion": "v1", "kind": "List", "items": self.nodes()}
        self.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))

    def wait_nodes_ready(self, timeout_s: int = 120) -> None:
        if core.is_dry():  # nothing was created to wait for
            return
        names = [n["metadata"]["name"] for n in self.nodes()]
        self.kubectl(
            "wait",
            "--for=condition=Ready",
            f"--timeout={timeout_s}s",
            *(f"node/{n}" for n in names),
        )

    def down(self) -> None:
        """Delete the cluster and its processes; a no-op when it does not exist."""
        cmd = [str(tools.ensure("kwokctl")), "delete", "cluster", "--name", self.name]
        if self.kubeconfig is not None:
            cmd += ["--kubeconfig", str(self.kubeconfig)]
        console.log("[bold]$ " + " ".join(cmd))
        core.run(cmd, env=self.env(), timeout=120, capture=False, ok_codes=range(256))

    def node_table(self) -> list[tuple[str, str, str, str]]:
        """(name, zone, nodegroup, Ready) for each node, for the status printout."""
        data = json.loads(self.kubectl("get", "nodes", "-o", "json"))
        rows = []
        for n in data["items"]:
            labels = n["metadata"].get("labels", {})
            ready = next(
                (c["status"] for c in n["status"].get("conditions", []) if c["type"] == "Ready"),
                "?",
            )
            rows.append(
                (
                    n["metadata"]["name"],
                    labels.get("topology.kubernetes.io/zone", "-"),
                    labels.get("eks.amazonaws.com/nodegroup", "-"),
                    ready,
                )
            )
        return rows


def wait_until(predicate: Any, timeout_s: float, interval_s: float = 0.5, what: str = "condition") -> Any:
    """Poll predicate() until it returns something truthy; TimeoutError names `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)
