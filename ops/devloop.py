"""The development loop as CI runs it: lint (ruff, mypy, hadolint) and the whole test run."""

from __future__ import annotations

import os

from ops import core
from ops.core import REPO_ROOT, cache_root, console

LINTERS = (["ruff", "check", "."], ["ruff", "format", "--check", "."], ["mypy"])


def lint() -> None:
    """ruff and mypy over the repository, hadolint over every Dockerfile; raises OpsError on the first failure."""
    from ops.images import lint as image_lint

    # The mypy cache lives outside the checkout so a fresh CI clone does not re-analyse torch from scratch.
    env = {"MYPY_CACHE_DIR": os.environ.get("MYPY_CACHE_DIR") or str(cache_root() / "mypy")}
    for argv in LINTERS:
        core.run(argv, cwd=REPO_ROOT, env=env, capture=False, echo=True)
    if core.is_dry():
        console.print(f"would run hadolint on {len(image_lint.dockerfiles())} Dockerfiles")
        return
    findings = image_lint.lint()
    for line in findings:
        console.print(line, markup=False)
    if findings:
        raise core.OpsError(f"hadolint: {len(findings)} finding(s)")
    console.print(f"hadolint clean: {len(image_lint.dockerfiles())} Dockerfiles")


def run_tests(k: str = "", marker: str = "", skip_lint: bool = False) -> None:
    """Everything CI runs: the pinned toolchain (cached), the demo bundles, lint, then pytest."""
    from ops.toolchain import tools

    missing = [r.name for r in tools.install() if r.required and r.path is None]
    if missing and not core.is_dry():
        raise core.OpsError(f"required tools missing: {', '.join(missing)}")
    if core.is_dry():
        console.print("would build the demo bundles (models/) when missing")
    else:
        from ops.models import build_all

        build_all(progress=console.log)
    if not skip_lint:
        lint()
    # The peer servers and the KServe client are tested too, but are not a default group.
    core.ensure_group("peers")
    argv = ["pytest", *(["-k", k] if k else []), *(["-m", marker] if marker else [])]
    core.run(argv, cwd=REPO_ROOT, capture=False, echo=True)
