"""invoke tasks for the simulated EKS cluster (kwok on a real control plane) and the root `deploy` task."""

from __future__ import annotations

from pathlib import Path

from invoke import Collection, Context
from rich.table import Table

from ops.k8s import deploy as deploy_mod
from ops.k8s import sim as cluster_mod
from ops.tasks.common import ops_task
from ops.tasks.local import node_image


def _sim(c: Context, name: str | None, kubeconfig: str | None, **node_counts: int) -> cluster_mod.SimCluster:
    return cluster_mod.SimCluster(
        name=name or c.config["cluster"]["sim"]["name"],
        kubeconfig=Path(kubeconfig) if kubeconfig else None,
        node_counts={**cluster_mod.NODE_COUNTS, **node_counts},
    )


@ops_task(
    help={
        "name": "Cluster name (default cluster.sim.name in invoke.yaml); the context is kwok-<name>.",
        "kubeconfig": "Kubeconfig file to write the context into (default $KUBECONFIG or ~/.kube/config).",
        "cpu_nodes": "Fake nodes of node group cpu-general.",
        "gpu_nodes": "Fake nodes of node group gpu-t4 (one more than the image-classifier's replicas: the surge).",
    }
)
def sim_up(
    c: Context,
    name: str | None = None,
    kubeconfig: str | None = None,
    cpu_nodes: int = cluster_mod.NODE_COUNTS["cpu-general"],
    gpu_nodes: int = cluster_mod.NODE_COUNTS["gpu-t4"],
) -> None:
    """Start kube-apiserver/etcd/controller-manager/scheduler + kwok (pinned, cached binaries) and the fake nodes."""
    sim = _sim(c, name, kubeconfig, **{"cpu-general": cpu_nodes, "gpu-t4": gpu_nodes})
    sim.up()
    if c.config.run.dry:
        return
    table = Table(title=f"simulated EKS cluster, context {sim.context}")
    for col in ("node", "zone", "nodegroup", "Ready"):
        table.add_column(col)
    for row in sim.node_table():
        table.add_row(*row)
    cluster_mod.console.print(table)


@ops_task(
    help={
        "name": "Cluster name (default cluster.sim.name).",
        "kubeconfig": "Kubeconfig file holding its context.",
    }
)
def sim_down(c: Context, name: str | None = None, kubeconfig: str | None = None) -> None:
    """Stop and delete the simulated cluster."""
    _sim(c, name, kubeconfig).down()


@ops_task(
    positional=[],
    help={
        "env": "local | staging | prod (overlays/local, overlays/eks-staging, overlays/eks-prod).",
        "dry_run": "Show a server-side diff and change nothing.",
        "yes": "Skip the prod confirmation prompt.",
        "context": "Kube context to use (default: the current context); must be allowed for the env.",
        "timeout": "Seconds to wait for each rollout (default: 300 s, and for the GPU service the GPU provisioning "
        "budget's rollout wait, docs/manifests.md).",
    },
)
def deploy(
    c: Context,
    env: str,
    dry_run: bool = False,
    yes: bool = False,
    context: str | None = None,
    timeout: int = 0,
) -> None:
    """Render the overlay (as manifests.validate does), check schemas and policies, check the context, apply
    server-side, wait for rollouts."""
    conf = c.config.get("deploy", {})
    deploy_mod.deploy(
        env,
        dict(conf.get("contexts", {})),
        context=context,
        dry_run=dry_run,
        yes=yes,
        timeout_s=timeout or None,
    )


ns = Collection("cluster")
ns.add_task(sim_up)
ns.add_task(sim_down)
ns.add_task(node_image)
# At the root only (`invoke deploy`): one of the tasks a user types every day.
ROOT_TASKS = [deploy]
