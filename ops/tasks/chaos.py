"""invoke task for the chaos run: the long hostile-input, overload and shutdown tests, and their report."""

from __future__ import annotations

import shlex
from datetime import UTC, datetime
from pathlib import Path

from invoke import Collection, Context, Exit, task
from rich.console import Console

from ops.perf import chaos as chaos_mod

console = Console()


@task(
    help={
        "scale": "How much longer than CI: 10 gives ~22k fuzz cases, 40 s overloads, 600 schemathesis examples "
        "per operation (CI runs 1).",
        "out": "Folder for figures/ and report.md (default: bench/results/chaos-<cores>core-<date>/).",
        "pin": "Pin the load generator and the services to disjoint halves of the cores (--no-pin: share them).",
    }
)
def chaos(c: Context, scale: float = 10.0, out: str = "", pin: bool = True) -> None:
    """Attack both services on 127.0.0.1 as production's worst day would (seeded fuzz, schemathesis, 2x overload on
    both paths, recovery, SIGTERM mid-overload, a slow upstream) and write a report with the counts."""
    run = chaos_mod.ChaosRun(scale=scale, out=Path(out) if out else chaos_mod.default_out(), pin=pin)
    started = datetime.now(UTC)
    console.print(f"chaos run at scale {scale:g}: figures and report in {run.out}; pinning: {run.pinning()}")
    with c.cd(str(chaos_mod.REPO_ROOT)):
        # The settings are part of the command, so `invoke --dry chaos` shows all of them.
        command = shlex.join(["env", *(f"{k}={v}" for k, v in run.env().items()), *run.pytest_argv()])
        result = c.run(command, echo=True, warn=True, pty=False)
    if c.config.run.dry:
        return
    (run.out / "figures").mkdir(parents=True, exist_ok=True)
    outcome = "passed" if result is not None and result.ok else "FAILED (see its output)"
    report = chaos_mod.write_report(run, outcome, started)
    console.print(report.read_text(), markup=False)
    console.print(f"[bold]report:[/] {report}")
    if result is None or not result.ok:
        raise Exit("chaos run: some tests failed; the report has what they measured", code=1)


ns = Collection("chaos")
ROOT_TASKS = [chaos]
