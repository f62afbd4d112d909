"""invoke tasks for the development loop: lint and the full test suite."""

from __future__ import annotations

import os

from invoke import Collection, Context

from ops.core import cache_root
from ops.tasks.common import ops_task


@ops_task
def lint(c: Context) -> None:
    """ruff and mypy over the whole repository, plus hadolint over every Dockerfile."""
    c.run("ruff check .", echo=True, pty=False)
    c.run("ruff format --check .", echo=True, pty=False)
    # The cache lives outside the checkout so a fresh CI clone does not re-analyse torch from scratch.
    cache = os.environ.get("MYPY_CACHE_DIR") or str(cache_root() / "mypy")
    c.run("mypy", echo=True, pty=False, env={"MYPY_CACHE_DIR": cache})
    c.run("invoke images.lint", echo=True, pty=False)


@ops_task(
    help={
        "k": "Only tests matching this pytest -k expression.",
        "marker": "Only tests with this pytest marker expression, e.g. 'not containers and not cluster'.",
        "skip_lint": "Skip ruff/mypy/hadolint.",
    }
)
def test(c: Context, k: str = "", marker: str = "", skip_lint: bool = False) -> None:
    """Everything CI runs: the pinned toolchain (cached), demo bundles, lint, then pytest (needs a docker engine)."""
    c.run("invoke tools.install", echo=True, pty=False)
    c.run("invoke models.build", echo=True, pty=False)
    if not skip_lint:
        lint(c)
    args = [f"-k {k!r}" if k else "", f"-m {marker!r}" if marker else ""]
    c.run(" ".join(["pytest", *filter(None, args)]), echo=True, pty=False)


ns = Collection("dev", test, lint)
# Also at the root, where users and CI call them (`invoke test`).
ROOT_TASKS = [test, lint]
