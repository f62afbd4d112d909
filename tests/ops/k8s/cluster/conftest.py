"""Session fixtures: a real simulated EKS control plane (kwokctl --runtime binary) and its node roles."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ops.k8s.nodegroups import NODEGROUP_LABEL, managed_nodegroups
from ops.k8s.sim import SimCluster


@pytest.fixture(scope="session")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimCluster]:
    """The control plane and fake nodes; torn down (processes and data) at the end of the session."""
    with SimCluster.private(tmp_path_factory.mktemp("kwok"), "eks-sim-test").running() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def node_roles(sim: SimCluster) -> dict[str, str]:
    """node name -> role (cpu|gpu), from nodegroups.yaml via the nodes the simulator created."""
    groups = managed_nodegroups()
    return {n["metadata"]["name"]: groups[n["metadata"]["labels"][NODEGROUP_LABEL]].role for n in sim.nodes()}
