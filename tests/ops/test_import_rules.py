"""Import rules of ops/, checked on the source: tasks sit on top, and the GPU runner's modules import without the
toolchain or the dev-only packages (the GPU machine has torch, pillow, httpx, prometheus-client and the wheels
from `invoke bench.wheels`, nothing else)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.core import REPO_ROOT

OPS = REPO_ROOT / "ops"
TOOLCHAIN = ("ops.toolchain",)
# The ops modules the GPU runner's own code names: bench/gpu/run.sh (`python -m ops...`, `from ops... import`) and
# the pytest-benchmark suites in bench/ it runs. Their module-level imports must work on the GPU machine.
GPU_RUNNER_CODE = (REPO_ROOT / "bench" / "gpu" / "run.sh", *sorted((REPO_ROOT / "bench").glob("*.py")))
DEV_ONLY = ("invoke", "yaml", "kubernetes", "kubernetes_validate", "jsonschema", "testcontainers", "aws_cdk", "boto3")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool) -> Iterator[tuple[int, str]]:
    """(line, imported module) of every import; top_level_only skips imports inside functions."""
    tree = ast.parse(path.read_text())
    nodes = list(ast.walk(tree))
    if top_level_only:  # module-level if/try blocks run at import time too; function bodies do not
        in_functions = {
            id(child)
            for fn in nodes
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
            for child in ast.walk(fn)
            if child is not fn
        }
        nodes = [n for n in nodes if id(n) not in in_functions]
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            yield from ((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)


def ops_files() -> list[Path]:
    return sorted(OPS.rglob("*.py"))


def perf_files() -> list[Path]:
    return [p for p in ops_files() if module_name(p).startswith("ops.perf.")]


def gpu_runner_modules() -> list[str]:
    """Every ops module the GPU runner names, and every ops module those import at module level or start
    (`"-m", "ops.x"`); plus ops.models, which ensure_demo_bundle imports to build a missing demo bundle."""
    named = {m for path in GPU_RUNNER_CODE for m in re.findall(r"\b(ops(?:\.\w+)+)", path.read_text())}
    named.add("ops.models")
    todo, found = sorted(named), set()
    while todo:
        name = todo.pop()
        path = REPO_ROOT / Path(*name.split(".")).with_suffix(".py")
        if name in found or not path.is_file():
            continue
        found.add(name)
        todo += [m for _, m in imports(path, True) if m.startswith("ops.")]
        todo += re.findall(r"[\"'](ops(?:\.\w+)+)[\"']", path.read_text())
    return sorted(found)


def test_the_gpu_runner_names_the_perf_modules() -> None:
    """The list is read from the runner itself; a runner that names none would make the test below vacuous."""
    assert {"ops.perf.benchmodels", "ops.perf.ratios", "ops.perf.report", "ops.perf.localservice"} <= set(
        gpu_runner_modules()
    )


@pytest.mark.parametrize("path", [p for p in ops_files() if "tasks" not in p.parts], ids=module_name)
def test_nothing_in_ops_imports_the_task_layer(path: Path) -> None:
    upward = [f"{path.name}:{line} {name}" for line, name in imports(path, False) if name.startswith("ops.tasks")]
    assert upward == []


@pytest.mark.parametrize("path", perf_files(), ids=module_name)
def test_perf_imports_the_toolchain_only_inside_functions(path: Path) -> None:
    eager = [
        f"{path.name}:{line} {name}"
        for line, name in imports(path, True)
        if any(name == t or name.startswith(t + ".") for t in TOOLCHAIN)
    ]
    assert eager == []


def test_the_gpu_runner_imports_without_dev_packages() -> None:
    script = textwrap.dedent(
        f"""
        import importlib, importlib.abc, sys
        blocked = {DEV_ONLY!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in blocked:
                    raise ModuleNotFoundError(f"{{name}} is not on the GPU machine")
                return None
        sys.meta_path.insert(0, Block())
        for module in {gpu_runner_modules()!r}:
            importlib.import_module(module)
        eager = sorted(m for m in sys.modules if m.split(".")[0] == "ops" and m.startswith({TOOLCHAIN!r}))
        print("TOOLCHAIN", eager)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TOOLCHAIN []" in proc.stdout
