"""`invoke infra.deploy` is guarded like `invoke deploy`: right account, confirmation for prod, nothing run on --dry."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ops.infra import deploy, settings

ACCOUNT = settings.environment("prod").account


def test_an_account_not_allowed_is_refused() -> None:
    with pytest.raises(deploy.InfraDeployRefused, match="not allowed for env 'prod'"):
        deploy.guard("prod", {"prod": "999999999999"}, account=ACCOUNT, yes=True)


def test_nothing_is_allowed_by_default() -> None:
    with pytest.raises(deploy.InfraDeployRefused, match=r"allowed: none"):
        deploy.guard("prod", {"prod": ""}, account=ACCOUNT, yes=True)


def test_an_allowed_account_that_is_not_the_overlays_is_refused() -> None:
    with pytest.raises(deploy.InfraDeployRefused, match="pulls its images from account 111122223333"):
        deploy.guard("staging", {"staging": "444455556666"}, account="444455556666")


def test_prod_needs_confirmation() -> None:
    allowed = {"prod": f"{ACCOUNT}, 444455556666"}
    with pytest.raises(deploy.InfraDeployRefused, match="not confirmed"):
        deploy.guard("prod", allowed, account=ACCOUNT, confirm=lambda _q: False)
    assert deploy.guard("prod", allowed, account=ACCOUNT, confirm=lambda _q: True) == ACCOUNT
    assert deploy.guard("prod", allowed, account=ACCOUNT, yes=True) == ACCOUNT


def test_staging_needs_no_confirmation() -> None:
    assert deploy.guard("staging", {"staging": ACCOUNT}, account=ACCOUNT, confirm=lambda _q: False) == ACCOUNT


def test_unknown_env() -> None:
    with pytest.raises(deploy.InfraDeployRefused, match="unknown env 'qa'"):
        deploy.guard("qa", {}, account=ACCOUNT)


def test_deploy_command_deploys_the_registry_and_the_env() -> None:
    argv = deploy.deploy_command("prod", settings.REPO_ROOT / "cdk.out")
    assert argv[:4] == ["npx", "--yes", deploy.DEFAULT_CDK_CLI, "deploy"]
    assert argv[-2:] == ["eks-inference-registry", "eks-inference-prod-cluster"]
    assert "broadening" in argv


def _inv(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=settings.REPO_ROOT, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize("task", ["infra.synth --env prod", "infra.check", "infra.deploy --env prod"])
def test_dry_runs_show_the_plan_and_run_nothing(task: str) -> None:
    proc = _inv("--dry", *task.split())
    assert proc.returncode == 0, proc.stderr
    assert "would synthesize" in proc.stdout
    if "deploy" in task:
        assert "would run npx --yes aws-cdk@" in proc.stderr
        assert "guard" in proc.stdout


def test_deploy_without_credentials_is_refused() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        {
            "AWS_CONFIG_FILE": "/nonexistent",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
            "AWS_EC2_METADATA_DISABLED": "true",
            "INVOKE_INFRA_OUT": "build/cdk-guard-test",
        }
    )
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "infra.deploy", "--env", "staging"],
        cwd=settings.REPO_ROOT, capture_output=True, text=True, check=False, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "infra deploy refused: no usable AWS credentials" in proc.stderr
    assert "npx" not in proc.stdout
