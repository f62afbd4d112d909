"""invoke tasks for the development loop: lint and the full test suite (logic in ops.devloop)."""

from __future__ import annotations

from invoke import Collection, Context

from ops import devloop
from ops.tasks.common import ops_task


@ops_task
def lint(c: Context) -> None:
    """ruff and mypy over the whole repository, plus hadolint over every Dockerfile."""
    devloop.lint()


@ops_task(
    help={
        "k": "Only tests matching this pytest -k expression.",
        "marker": "Only tests with this pytest marker expression, e.g. 'not containers and not cluster'.",
        "skip_lint": "Skip ruff/mypy/hadolint.",
    }
)
def test(c: Context, k: str = "", marker: str = "", skip_lint: bool = False) -> None:
    """Everything CI runs: the pinned toolchain (cached), demo bundles, lint, then pytest (needs a docker engine)."""
    devloop.run_tests(k, marker, skip_lint)


ns = Collection("dev", lint)
# At the root only, where users and CI call it (`invoke test`).
ROOT_TASKS = [test]
