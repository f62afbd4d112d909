"""Import rules of ops/ and services/, checked on the source.

No cycles (function-local imports included); services never import ops; ops never imports the benchmark suites;
tasks sit on top; and the GPU runner's modules import without the toolchain or the dev-only packages (the GPU
machine has torch, pillow, httpx, prometheus-client and the wheels from `invoke bench.wheels`, nothing else)."""

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
SERVICES = REPO_ROOT / "services"
TOOLCHAIN = ("ops.toolchain",)
# The ops modules the GPU runner's own code names: bench/gpu/run.sh (`python -m ops...`, `from ops... import`) and
# the pytest-benchmark suites in bench/ it runs. Their module-level imports must work on the GPU machine.
GPU_RUNNER_CODE = (REPO_ROOT / "bench" / "gpu" / "run.sh", *sorted((REPO_ROOT / "bench").glob("*.py")))
DEV_ONLY = ("invoke", "yaml", "kubernetes", "kubernetes_validate", "jsonschema", "testcontainers", "aws_cdk", "boto3")


def module_name(path: Path) -> str:
    # services/<package> is on sys.path as <package> (the wheel's layout), ops/ as ops.
    root = SERVICES if path.is_relative_to(SERVICES) else REPO_ROOT
    parts = path.relative_to(root).with_suffix("").parts
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


def service_files() -> list[Path]:
    return sorted(SERVICES.rglob("*.py"))


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its body (an import of a name inside a module counts
    as an import of that module)."""
    paths = {module_name(p): p for p in [*ops_files(), *service_files()]}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        targets = set()
        for _, imported in imports(path, False):
            while imported and imported not in paths:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert {"ops.perf.bench", "serving.app"} <= set(graph)  # the walk saw both trees
    assert cycles(graph) == []


def test_the_cycle_finder_sees_a_function_local_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("path", service_files(), ids=module_name)
def test_services_import_nothing_from_ops(path: Path) -> None:
    assert [f"{path.name}:{line} {n}" for line, n in imports(path, False) if n.split(".")[0] == "ops"] == []


@pytest.mark.parametrize("path", ops_files(), ids=module_name)
def test_ops_imports_nothing_from_the_benchmark_suites(path: Path) -> None:
    assert [f"{path.name}:{line} {n}" for line, n in imports(path, False) if n.split(".")[0] == "bench"] == []


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
