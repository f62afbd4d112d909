"""The task layer: OpsError becomes a clean Exit, `--dry` reaches the runner, and `invoke --dry images.build` starts
no process at all."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from invoke import Config, Context, Exit

from ops import core
from ops.tasks.common import ops_task

# Runs invoke in a fresh interpreter that records every process it would start (PEP 578 audit events).
NO_PROCESS = textwrap.dedent(
    """
    import sys
    started = []
    def hook(event, args):
        if event in ("subprocess.Popen", "os.system", "os.posix_spawn", "os.exec", "os.spawn", "os.fork"):
            started.append((event, repr(args)[:200]))
    sys.addaudithook(hook)
    from invoke.main import program
    try:
        program.run(["invoke", *sys.argv[1:]], exit=False)
    finally:
        print("STARTED", started, file=sys.stderr)
    """
)


def _run_in_process(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", NO_PROCESS, *argv],
        cwd=core.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_dry_images_build_starts_no_process() -> None:
    proc = _run_in_process("--dry", "images.build", "--base", "cpu", "--base", "cuda")
    assert proc.returncode == 0, proc.stderr
    assert "STARTED []" in proc.stderr, proc.stderr[-3000:]
    for name, spec in core.SERVICES.items():
        assert f"service {spec.repository}:<commit>-cuda" in proc.stderr, name
    assert "base eks-inference/base-cpu:" in proc.stderr


@pytest.mark.parametrize(
    "task",
    ["dev.lint", "bench --quick", "bench.peers", "bench.clients", "bench.profile", "bench.load --step",
     "bench.capacity --run-step",
     "bench.wheels", "infra.synth", "infra.check"],
)  # fmt: skip
def test_dry_tasks_start_no_process(task: str) -> None:
    """Tasks that would lint, measure, download or synthesize only say what they would do under `invoke --dry`."""
    proc = _run_in_process("--dry", *task.split())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "STARTED []" in proc.stderr, proc.stderr[-3000:]
    assert "would" in proc.stdout + proc.stderr


def test_dry_sim_up_creates_nothing(tmp_path: Path) -> None:
    """`invoke --dry cluster.sim-up` shows the kwokctl and kubectl commands that change things, and runs none."""
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "--dry", "cluster.sim-up", "--name", "dry-probe"],
        cwd=core.REPO_ROOT,
        env={**os.environ, "KUBECONFIG": str(tmp_path / "kubeconfig")},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "would run" in proc.stderr
    assert "create cluster" in proc.stderr
    assert "apply -f -" in proc.stderr
    assert not (tmp_path / "kubeconfig").exists()
    assert not (core.cache_root() / "kwok" / "stages-dry-probe.yaml").exists()


def test_the_process_probe_sees_processes() -> None:
    """The probe above is not blind: a task that renders with Kustomize is seen starting kubectl/kustomize."""
    proc = _run_in_process("manifests.render", "--overlay", "local", "--output", "/dev/null")
    assert proc.returncode == 0, proc.stderr
    assert "STARTED [('subprocess.Popen'" in proc.stderr


def _context(dry: bool = False) -> Context:
    return Context(config=Config(overrides={"run": {"dry": dry}}))


def test_an_ops_error_ends_the_task_cleanly() -> None:
    @ops_task
    def broken(c: Context) -> None:
        """Fails the way ops functions fail."""
        raise core.OpsError("the cache is read-only")

    class Refused(core.OpsError):
        exit_code = 2

    @ops_task(what="thing deploy")
    def guarded(c: Context) -> None:
        """Refuses."""
        raise Refused("wrong context")

    with pytest.raises(Exit) as info:
        broken(_context())
    assert (info.value.code, info.value.message) == (1, "broken failed: the cache is read-only")
    with pytest.raises(Exit) as info:
        guarded(_context())
    assert (info.value.code, info.value.message) == (2, "thing deploy refused: wrong context")


def test_dry_reaches_the_runner() -> None:
    seen: list[bool] = []

    @ops_task(help={"x": "a flag"})
    def plan(c: Context, x: bool = False) -> None:
        """Records whether commands would run."""
        seen.append(core.is_dry())
        core.run(["false"])  # a side effect: shown, not started, under --dry

    plan(_context(dry=True))
    with pytest.raises(Exit, match="plan failed: command failed"):
        plan(_context(dry=False))
    assert seen == [True, False]
    assert not core.is_dry()
    assert plan.help == {"x": "a flag"}
    assert [a.name for a in plan.get_arguments()] == ["x"]


DAILY = {"up", "down", "test", "serve", "smoke", "deploy"}


def test_every_task_is_listed_once() -> None:
    """The daily six at the root, everything else in a namespace, and no task under two names."""
    import tasks

    assert set(tasks.ns.tasks) == DAILY
    placed = [id(t) for t in tasks.ns.tasks.values()]
    placed += [id(t) for coll in tasks.ns.collections.values() for t in coll.tasks.values()]
    assert len(placed) == len(set(placed)), "a task is listed under two names"


HELP_EVERY_TASK = textwrap.dedent(
    """
    import contextlib, io, sys
    from invoke.main import program
    import tasks
    names = sorted(tasks.ns.task_names)
    failed = []
    for name in names:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            program.run(["invoke", "--help", name], exit=False)
        text = out.getvalue()
        if "Docstring:" not in text or "none" in text.split("Docstring:")[1].split("Options:")[0]:
            failed.append(name)
    print("TASKS", len(names), "FAILED", failed)
    """
)


def test_every_listed_task_explains_itself() -> None:
    """`invoke --help <task>` works for every task `invoke --list` shows, and each has a docstring."""
    proc = subprocess.run(
        [sys.executable, "-c", HELP_EVERY_TASK], cwd=core.REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    count, failed = proc.stdout.split("TASKS ")[1].split(" FAILED ")
    assert int(count) > 30
    assert failed.strip() == "[]"


def test_the_docs_name_only_real_tasks() -> None:
    """Every `invoke <task>` the README and docs/ show exists (tasks were renamed once; the docs must follow)."""
    import tasks

    names = set(tasks.ns.task_names) | {n for aliases in tasks.ns.task_names.values() for n in aliases}
    names |= set(tasks.ns.collections)  # `invoke bench` runs the collection's default task
    docs = [core.REPO_ROOT / "README.md", *sorted((core.REPO_ROOT / "docs").glob("*.md"))]
    command = re.compile(r"(?:`|uv run )invoke ([a-z][a-z0-9.-]*[a-z0-9])")
    shown = {(doc.name, name) for doc in docs for name in command.findall(doc.read_text())}
    assert {(doc, name) for doc, name in shown if name not in names} == set()
