"""Every overlay renders and is accepted by the real apiserver; the deploy guard refuses wrong contexts."""

from __future__ import annotations

import pytest
import yaml

from ops import deploy
from ops.cluster import SimCluster

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("env", sorted(deploy.OVERLAYS))
def test_overlay_renders_and_passes_a_server_side_dry_run(sim: SimCluster, env: str) -> None:
    rendered = deploy.render(env)
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "Namespace"}
    first, rest = deploy.split_first(rendered)
    # A dry run of namespaced objects needs their namespace to exist; creating it is the only change.
    manager = ["--force-conflicts", f"--field-manager={deploy.FIELD_MANAGER}"]
    sim.kubectl("apply", "--server-side", *manager, "-f", "-", input_text=first)
    out = sim.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        *manager,
        "-f",
        "-",
        input_text=rest,
    )
    accepted = [line for line in out.splitlines() if line.endswith("(server dry run)")]
    assert len(accepted) == len(docs) - len(list(yaml.safe_load_all(first))), out


def test_a_context_outside_the_allow_list_is_refused(sim: SimCluster) -> None:
    allowed = {"prod": "arn:aws:eks:us-east-1:*:cluster/eks-inference-prod"}
    with pytest.raises(deploy.DeployRefused, match="not allowed for env 'prod'"):
        deploy.deploy("prod", allowed, context=sim.context, kubeconfig=sim.kubeconfig, yes=True)
    with pytest.raises(deploy.DeployRefused, match="not allowed"):
        deploy.deploy(
            "staging",
            {"prod": sim.context},
            context=sim.context,
            kubeconfig=sim.kubeconfig,
        )


def test_unknown_env_is_refused() -> None:
    with pytest.raises(deploy.DeployRefused, match="unknown env"):
        deploy.deploy("qa", {"qa": "*"}, context="anything")
