"""Synthesize the CloudFormation templates offline: `python -m ops.infra.synth --env prod --out cdk.out`."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aws_cdk as cdk

from ops.infra import settings
from ops.infra.stack import DEFAULT_PUBLIC_ACCESS_CIDRS, ClusterStack, RegistryStack

REGISTRY_STACK = settings.REGISTRY_STACK
DEFAULT_OUT = settings.REPO_ROOT / "cdk.out"


@dataclass
class Synthesized:
    """What a synth produced: the stacks by name and the cloud assembly folder."""

    outdir: Path
    stacks: dict[str, cdk.Stack]

    def template(self, stack: str) -> Path:
        return self.outdir / f"{stack}.template.json"


def quiet_node_notices() -> None:
    """Silence jsii's Node.js version banner (Node 20 works for synth; docs/infra.md says which Node to use)."""
    for notice in ("UNTESTED", "END_OF_LIFE", "DEPRECATED"):
        os.environ.setdefault(f"JSII_SILENCE_WARNING_{notice}_NODE_VERSION", "1")


def build(
    env_names: Sequence[str], outdir: Path = DEFAULT_OUT, public_access_cidrs: Sequence[str] = ()
) -> tuple[cdk.App, dict[str, cdk.Stack]]:
    """The CDK app: the account's ECR stack plus one cluster stack per environment."""
    # No version-reporting metadata, no asset staging outside outdir: the output depends only on the repo.
    app = cdk.App(outdir=str(outdir), analytics_reporting=False)
    envs = [settings.environment(name) for name in env_names]
    if not envs:
        raise settings.InfraError("name at least one environment")
    first = envs[0]
    aws_env = cdk.Environment(account=first.account, region=first.region)
    stacks: dict[str, cdk.Stack] = {
        REGISTRY_STACK: RegistryStack(
            app,
            REGISTRY_STACK,
            repositories=first.ecr_repositories,
            env=aws_env,
            description="eks-inference: ECR repositories shared by every environment of the account",
        )
    }
    for env in envs:
        stacks[env.stack_name] = ClusterStack(
            app,
            env.stack_name,
            environment=env,
            public_access_cidrs=tuple(public_access_cidrs) or DEFAULT_PUBLIC_ACCESS_CIDRS,
            env=cdk.Environment(account=env.account, region=env.region),
            description=f"eks-inference {env.name}: EKS {env.cluster_name}, node groups from manifests/nodegroups.yaml",
        )
    return app, stacks


def synth(env_names: Sequence[str], outdir: Path = DEFAULT_OUT, public_access_cidrs: Sequence[str] = ()) -> Synthesized:
    """Write the cloud assembly (templates + manifest) to `outdir`; needs no AWS credentials or network."""
    quiet_node_notices()
    app, stacks = build(env_names, outdir, public_access_cidrs)
    app.synth()
    return Synthesized(outdir, stacks)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--env", action="append", choices=sorted(settings.ENV_OVERLAYS), required=True)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--public-access-cidr", action="append", default=[])
    args = parser.parse_args(argv)
    result = synth(args.env, args.out, args.public_access_cidr)
    for name in result.stacks:
        print(result.template(name).relative_to(Path.cwd()) if result.outdir.is_relative_to(Path.cwd()) else name)


if __name__ == "__main__":
    main()
