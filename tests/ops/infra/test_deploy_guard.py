"""`invoke infra.deploy` is guarded like `invoke deploy`: right account, confirmation for prod, nothing run on --dry."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ops.infra import deploy, settings

ACCOUNT = settings.environment("prod").account
ROLES = {
    "admin_role_arn": f"arn:aws:iam::{ACCOUNT}:role/eks-breakglass",
    "deploy_role_arn": f"arn:aws:iam::{ACCOUNT}:role/ci-deploy",
}
ACCESS = {"prod": ROLES, "staging": ROLES}
# The same roles as `invoke` reads them from the environment (infra.access.<env>.<key> in invoke.yaml).
ACCESS_ENV = {
    f"INVOKE_INFRA_ACCESS_{env.upper()}_{key.upper()}": arn for env in ("prod", "staging") for key, arn in ROLES.items()
}


def test_an_account_not_allowed_is_refused() -> None:
    with pytest.raises(deploy.InfraDeployRefused, match="not allowed for env 'prod'"):
        deploy.guard("prod", {"prod": "999999999999"}, access_conf=ACCESS, account=ACCOUNT, yes=True)


def test_nothing_is_allowed_by_default() -> None:
    with pytest.raises(deploy.InfraDeployRefused, match=r"allowed: none"):
        deploy.guard("prod", {"prod": ""}, access_conf=ACCESS, account=ACCOUNT, yes=True)


def test_an_allowed_account_that_is_not_the_overlays_is_refused() -> None:
    with pytest.raises(deploy.InfraDeployRefused, match="pulls its images from account 111122223333"):
        deploy.guard("staging", {"staging": "444455556666"}, access_conf=ACCESS, account="444455556666")


def test_prod_needs_confirmation() -> None:
    allowed = {"prod": f"{ACCOUNT}, 444455556666"}
    with pytest.raises(deploy.InfraDeployRefused, match="not confirmed"):
        deploy.guard("prod", allowed, access_conf=ACCESS, account=ACCOUNT, confirm=lambda _q: False)
    assert deploy.guard("prod", allowed, access_conf=ACCESS, account=ACCOUNT, confirm=lambda _q: True) == ACCOUNT
    assert deploy.guard("prod", allowed, access_conf=ACCESS, account=ACCOUNT, yes=True) == ACCOUNT


def test_staging_needs_no_confirmation() -> None:
    allowed = {"staging": ACCOUNT}
    assert deploy.guard("staging", allowed, access_conf=ACCESS, account=ACCOUNT, confirm=lambda _q: False) == ACCOUNT


def test_unknown_env() -> None:
    with pytest.raises(deploy.InfraDeployRefused, match="unknown env 'qa'"):
        deploy.guard("qa", {}, access_conf=ACCESS, account=ACCOUNT)


@pytest.mark.parametrize("missing", ["admin_role_arn", "deploy_role_arn"])
def test_unset_access_roles_are_refused_before_any_aws_call(missing: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without both roles nobody could `kubectl` into the cluster (the stack grants its creator nothing)."""

    def no_sts() -> str:
        raise AssertionError("the guard asked AWS before checking the access roles")

    monkeypatch.setattr(deploy, "caller_account", no_sts)
    conf = {"prod": {**ROLES, missing: ""}}
    with pytest.raises(deploy.InfraDeployRefused, match=rf"infra\.access\.prod\.{missing} is not set"):
        deploy.guard("prod", {"prod": ACCOUNT}, access_conf=conf, yes=True)
    with pytest.raises(deploy.InfraDeployRefused, match=r"infra\.access\.staging\.admin_role_arn is not set"):
        deploy.guard("staging", {"staging": ACCOUNT}, access_conf={})


def test_access_roles_of_another_account_or_not_roles_are_refused() -> None:
    foreign = {"prod": {**ROLES, "deploy_role_arn": "arn:aws:iam::999999999999:role/ci-deploy"}}
    with pytest.raises(deploy.InfraDeployRefused, match="is in account 999999999999"):
        deploy.check_access("prod", foreign)
    user = {"prod": {**ROLES, "admin_role_arn": f"arn:aws:iam::{ACCOUNT}:user/alice"}}
    with pytest.raises(deploy.InfraDeployRefused, match="is not an IAM role ARN"):
        deploy.check_access("prod", user)
    assert deploy.check_access("prod", ACCESS) == ROLES


def test_deploy_command_deploys_the_registry_and_the_env_with_the_access_roles() -> None:
    argv = deploy.deploy_command("prod", settings.REPO_ROOT / "cdk.out", ROLES)
    assert argv[:4] == ["npx", "--yes", deploy.DEFAULT_CDK_CLI, "deploy"]
    assert argv[-2:] == ["eks-inference-registry", "eks-inference-prod-cluster"]
    assert "broadening" in argv
    assert f"--parameters=eks-inference-prod-cluster:AdminRoleArn={ROLES['admin_role_arn']}" in argv
    assert f"--parameters=eks-inference-prod-cluster:DeployRoleArn={ROLES['deploy_role_arn']}" in argv


def _inv(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=settings.REPO_ROOT, capture_output=True, text=True, check=False, timeout=120,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.mark.parametrize("task", ["infra.synth --env prod", "infra.check", "infra.deploy --env prod"])
def test_dry_runs_show_the_plan_and_run_nothing(task: str) -> None:
    proc = _inv("--dry", *task.split(), env=ACCESS_ENV)
    assert proc.returncode == 0, proc.stderr
    assert "would synthesize" in proc.stdout
    if "deploy" in task:
        assert "would run npx --yes aws-cdk@" in proc.stderr
        assert "guard" in proc.stdout
        assert f"AdminRoleArn={ROLES['admin_role_arn']}" in proc.stderr.replace("\n", "")  # rich wraps lines


def test_deploy_without_access_roles_is_refused_even_dry() -> None:
    """invoke.yaml ships both roles empty: infra.deploy refuses until an operator names them."""
    unset = {k: "" for k in ACCESS_ENV}
    proc = _inv("--dry", "infra.deploy", "--env", "prod", env=unset)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "infra deploy refused: infra.access.prod.admin_role_arn is not set" in proc.stderr
    assert "npx" not in proc.stdout + proc.stderr


def test_deploy_without_credentials_is_refused() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        {
            "AWS_CONFIG_FILE": "/nonexistent",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
            "AWS_EC2_METADATA_DISABLED": "true",
            "INVOKE_INFRA_OUT": "build/cdk-guard-test",
            **{k: v.replace(ACCOUNT, settings.environment("staging").account) for k, v in ACCESS_ENV.items()},
        }
    )
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "infra.deploy", "--env", "staging"],
        cwd=settings.REPO_ROOT, capture_output=True, text=True, check=False, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "infra deploy refused: no usable AWS credentials" in proc.stderr
    assert "npx" not in proc.stdout
