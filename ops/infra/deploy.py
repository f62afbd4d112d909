"""`invoke infra.deploy`: guard the AWS account like `invoke deploy` guards the kube context, then `cdk deploy`."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ops.core import OpsError
from ops.infra import access, settings

# The CDK CLI (npm package aws-cdk) that deploys the synthesized assembly; the library is aws-cdk-lib (PyPI).
DEFAULT_CDK_CLI = "aws-cdk@3.0.0"


class InfraDeployRefused(OpsError):
    """The guard said no: wrong account, unconfirmed prod, unknown env, or no credentials."""

    exit_code = 2


def parse_allowed(value: str | Sequence[str]) -> list[str]:
    """invoke.yaml holds a comma-separated string, so INVOKE_INFRA_ACCOUNTS_<ENV> can override it."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return [item.strip() for item in items if item.strip()]


def caller_account() -> str:
    """The AWS account of the credentials in effect (STS GetCallerIdentity); refuses when there are none."""
    import boto3
    import botocore.exceptions

    try:
        return str(boto3.client("sts").get_caller_identity()["Account"])
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise InfraDeployRefused(f"no usable AWS credentials: {exc}") from exc


def check_account(env: str, account: str, allowed: Sequence[str]) -> None:
    """Refuse unless the credentials' account is allowed for `env` and is the account the overlay names."""
    expected = settings.environment(env).account
    if account not in allowed:
        raise InfraDeployRefused(
            f"AWS account {account} is not allowed for env {env!r} (allowed: {', '.join(allowed) or 'none'}); "
            f"set infra.accounts.{env} in invoke.yaml or INVOKE_INFRA_ACCOUNTS_{env.upper()}"
        )
    if account != expected:
        raise InfraDeployRefused(
            f"AWS account {account} is allowed for {env!r}, but overlays/{settings.ENV_OVERLAYS[env]} pulls "
            f"its images from account {expected}: fix one of them first"
        )


def check_access(env: str, access_conf: Mapping[str, object]) -> dict[str, str]:
    """The admin and deploy role ARNs of `env` (infra.access in invoke.yaml); refuses when one is unset.

    Checked before any AWS call: a cluster without them has no admin but CloudFormation's own role.
    """
    try:
        return access.access_roles(env, access_conf, settings.environment(env).account)
    except access.AccessNotConfigured as exc:
        raise InfraDeployRefused(str(exc)) from exc


def guard(
    env: str,
    allowed_accounts: Mapping[str, str | Sequence[str]],
    *,
    access_conf: Mapping[str, object],
    yes: bool = False,
    account: str | None = None,
    confirm: Callable[[str], bool] | None = None,
) -> str:
    """Everything `invoke infra.deploy` checks before it changes AWS; returns the account."""
    if env not in settings.ENV_OVERLAYS:
        raise InfraDeployRefused(f"unknown env {env!r}; expected one of {', '.join(settings.ENV_OVERLAYS)}")
    check_access(env, access_conf)
    account = account or caller_account()
    check_account(env, account, parse_allowed(allowed_accounts.get(env, "")))
    if env == "prod" and not yes:
        ask = confirm or _ask
        cluster = settings.environment(env).cluster_name
        if not ask(f"Deploy the {cluster} stacks to AWS account {account}?"):
            raise InfraDeployRefused("prod infrastructure deploy not confirmed")
    return account


def _ask(question: str) -> bool:
    from rich.prompt import Confirm

    if not os.isatty(0):
        raise InfraDeployRefused("prod infrastructure deploy needs confirmation: run interactively or pass --yes")
    return Confirm.ask(question, default=False)


def deploy_command(env: str, outdir: Path, roles: Mapping[str, str], cli: str = DEFAULT_CDK_CLI) -> list[str]:
    """The `cdk deploy` of the already synthesized assembly: the account's registry stack, then the cluster.

    `roles` (from `check_access`) fill the cluster stack's access-entry parameters.
    """
    stack = settings.environment(env).stack_name
    stacks = [settings.REGISTRY_STACK, stack]
    parameters = [
        f"--parameters={stack}:{access.ADMIN_ROLE_PARAMETER}={roles['admin_role_arn']}",
        f"--parameters={stack}:{access.DEPLOY_ROLE_PARAMETER}={roles['deploy_role_arn']}",
    ]
    # Prod: stop for any IAM or security-group widening; staging: same rule, so a surprise shows up there first.
    return [
        "npx",
        "--yes",
        cli,
        "deploy",
        "--app",
        str(outdir),
        "--require-approval",
        "broadening",
        *parameters,
        *stacks,
    ]
