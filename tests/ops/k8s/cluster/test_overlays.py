"""Every overlay renders and is accepted by the real apiserver; the deploy guard refuses wrong contexts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from ops.core import REPO_ROOT
from ops.k8s import deploy, karpenter
from ops.k8s.sim import SimCluster

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("env", sorted(deploy.OVERLAYS))
def test_overlay_renders_and_passes_a_server_side_dry_run(sim: SimCluster, env: str) -> None:
    rendered = deploy.render(env)
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "Namespace"}
    first, rest = deploy.split_first(rendered)
    manager = ["--force-conflicts", f"--field-manager={deploy.FIELD_MANAGER}"]
    # Karpenter's CRDs (the pinned release's, as its CRD chart installs them on EKS before the overlay): only where
    # the overlay renders their objects (eks-staging's NodePools and EC2NodeClasses).
    kinds = {d["kind"] for d in docs}
    crds = [crd for (_, kind), crd in karpenter.provider_crds().items() if kind in kinds]
    if crds:
        sim.kubectl("apply", "--server-side", "-f", "-", input_text=yaml.safe_dump_all(crds))
        names = [f"crd/{crd['metadata']['name']}" for crd in crds]
        sim.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
    # A dry run of namespaced objects needs their namespace to exist; creating it is the only change.
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


def _invoke_deploy(sim: SimCluster, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert sim.kubeconfig is not None
    full_env = {**os.environ, "KUBECONFIG": str(sim.kubeconfig), "COLUMNS": "250", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "invoke", "deploy", *args],
        cwd=REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_the_invoke_task_guards_prod_and_takes_the_allow_list_from_the_environment(sim: SimCluster) -> None:
    args = ("--env", "prod", "--context", sim.context, "--dry-run")
    refused = _invoke_deploy(sim, *args)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "not allowed for env 'prod'" in refused.stderr
    allowed = _invoke_deploy(sim, *args, env={"INVOKE_DEPLOY_CONTEXTS_PROD": sim.context})
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert f"kubectl --context {sim.context} diff --server-side" in allowed.stdout
    unconfirmed = _invoke_deploy(
        sim, "--env", "prod", "--context", sim.context, env={"INVOKE_DEPLOY_CONTEXTS_PROD": sim.context}
    )
    assert unconfirmed.returncode == 2
    assert "needs confirmation" in unconfirmed.stderr
