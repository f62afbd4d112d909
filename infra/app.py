"""The CDK app for the `cdk` CLI (`cd infra && npx aws-cdk@3.0.0 synth`); the stacks live in ops.infra.

`invoke infra.synth` runs the same code without the CLI. Environments: `-c envs=prod` (default: cdk.json's
`envs`, every environment). The CLI passes its context and output folder in CDK_CONTEXT_JSON and CDK_OUTDIR.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ops.infra import settings
from ops.infra.synth import build, quiet_node_notices


def main() -> None:
    context = json.loads(os.environ.get("CDK_CONTEXT_JSON") or "{}")
    envs = [e for e in str(context.get("envs", ",".join(settings.ENV_OVERLAYS))).split(",") if e]
    outdir = Path(os.environ.get("CDK_OUTDIR") or settings.REPO_ROOT / "cdk.out")
    quiet_node_notices()
    app, _ = build(envs, outdir)
    app.synth()


if __name__ == "__main__":
    main()
