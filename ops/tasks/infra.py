"""invoke tasks for the AWS infrastructure (CDK): synth, check, deploy (logic in ops.infra)."""

from __future__ import annotations

from pathlib import Path

from invoke import Collection, Context, Exit

from ops import core
from ops.core import out as console
from ops.infra import deploy as deploy_mod
from ops.infra import settings
from ops.tasks.common import ops_task

ENVS = ", ".join(settings.ENV_OVERLAYS)


def _conf(c: Context) -> dict:
    return dict(c.config.get("infra", {}))


def _outdir(c: Context) -> Path:
    return settings.REPO_ROOT / str(_conf(c).get("out", "cdk.out"))


def _templates(c: Context, env: list[str]) -> list[Path]:
    names = [settings.REGISTRY_STACK, *(settings.environment(e).stack_name for e in env)]
    return [_outdir(c) / f"{name}.template.json" for name in names]


def _synth(c: Context, env: list[str]) -> None:
    cidrs = deploy_mod.parse_allowed(str(_conf(c).get("public_access_cidrs", "")))
    if c.config.run.dry:
        console.print(f"would synthesize {', '.join(env)} into {_outdir(c)}")
        return
    from ops.infra import synth as synth_mod  # aws-cdk-lib: imported only when synthesizing

    result = synth_mod.synth(env, _outdir(c), cidrs)
    for name in result.stacks:
        console.print(f"synthesized {result.template(name)}")


@ops_task(
    iterable=["env"],
    help={"env": f"Environment to synthesize ({ENVS}; repeatable). Default: all of them."},
)
def synth(c: Context, env: list[str] | None = None) -> None:
    """Write the CloudFormation templates to cdk.out/ offline (no AWS credentials, no network)."""
    _synth(c, env or list(settings.ENV_OVERLAYS))


@ops_task(
    iterable=["env"],
    help={"env": f"Environment to check ({ENVS}; repeatable). Default: all of them."},
)
def check(c: Context, env: list[str] | None = None) -> None:
    """Synthesize, then run cfn-lint and checkov over the templates offline; fails on any finding not accepted."""
    from ops.infra import checks

    names = env or list(settings.ENV_OVERLAYS)
    _synth(c, names)
    if c.config.run.dry:
        console.print("would run cfn-lint and checkov over the templates")
        return
    report = checks.check(_templates(c, names))
    for line in checks.summary(report):
        console.print(line, markup=False)
    if not report.ok:
        raise Exit("infra check: findings not accepted (see above)", code=1)


@ops_task(
    what="infra deploy",
    help={
        "env": f"Environment to deploy ({ENVS}).",
        "yes": "Skip the prod confirmation prompt.",
    },
)
def deploy(c: Context, env: str, yes: bool = False) -> None:
    """Check the access roles (infra.access), synthesize, check the AWS account (infra.accounts), confirm for prod,
    then `cdk deploy` with the roles as the stack's access-entry parameters."""
    if env not in settings.ENV_OVERLAYS:
        raise Exit(f"infra deploy refused: unknown env {env!r}; expected one of {ENVS}", code=2)
    access_conf = dict(_conf(c).get("access", {}))
    # Before synth and before any AWS call: without both roles nobody could reach the cluster.
    roles = deploy_mod.check_access(env, access_conf)
    _synth(c, [env])
    cli = str(_conf(c).get("cdk_cli", deploy_mod.DEFAULT_CDK_CLI))
    command = deploy_mod.deploy_command(env, _outdir(c), roles, cli)
    if c.config.run.dry:
        # The guard calls AWS STS; a dry run only shows the plan.
        console.print(f"(dry run: the AWS account guard for {env!r} would run here)")
    else:
        account = deploy_mod.guard(env, dict(_conf(c).get("accounts", {})), access_conf=access_conf, yes=yes)
        console.print(f"AWS account {account} allowed for {env}")
    core.run(command, cwd=settings.REPO_ROOT, capture=False, echo=True)


ns = Collection("infra")
ns.add_task(synth)
ns.add_task(check)
ns.add_task(deploy)
ROOT_TASKS: list = []
