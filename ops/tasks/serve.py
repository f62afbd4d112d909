"""invoke tasks that run the services locally, without a cluster: serve, smoke, and the chaos run against them."""

from __future__ import annotations

import time
from pathlib import Path

from invoke import Collection, Context, Exit

from ops.core import out as console
from ops.tasks.common import ops_task


@ops_task(help={"only": "Run one service: image-classifier or text-classifier (default: both)."})
def serve(c: Context, only: str = "") -> None:
    """Build the demo bundles if needed, start both services on 127.0.0.1:8080/8081, and serve until Ctrl-C."""
    from ops.models import build_all
    from ops.serve import SERVICES, running

    build_all(progress=console.log)
    chosen = tuple(s for s in SERVICES if not only or s.name == only)
    if not chosen:
        raise Exit(f"unknown service {only!r}; choose from {[s.name for s in SERVICES]}", code=2)
    with running(chosen) as ready:
        for name, (service, seconds) in ready.items():  # the services log to this terminal
            console.print(f"[green]{name}[/] ready in {seconds:.1f}s at {service.url}  (docs: {service.url}/docs)")
        console.print("Ctrl-C stops them (they drain first).")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            console.print("stopping")


@ops_task(
    help={
        "image_url": "Base URL of the image classifier (default: 127.0.0.1:8080, as `invoke serve`, `up` and Tilt).",
        "text_url": "Base URL of the text classifier (default: 127.0.0.1:8081).",
    }
)
def smoke(c: Context, image_url: str = "", text_url: str = "") -> None:
    """One demo prediction per running service (a triangle image, a contact-info text); exit 1 if one fails."""
    import httpx
    from invoke import Exit

    from ops.serve import SERVICES
    from ops.serve import smoke as run_smoke

    urls = {s.name: f"http://127.0.0.1:{s.port}" for s in SERVICES}
    urls["image-classifier"] = image_url or urls["image-classifier"]
    urls["text-classifier"] = text_url or urls["text-classifier"]
    if c.config.run.dry:
        console.print(f"would POST one demo input to each of {urls}")
        return
    try:
        rows = run_smoke(urls)
    except httpx.HTTPError as exc:
        raise Exit(f"smoke failed: {exc}", code=1) from exc
    for name, what, label, score in rows:
        console.print(f"[green]{name}[/]: {what} -> {label} {score:.4f}")


@ops_task(
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
    from ops.perf import chaos as chaos_mod

    run = chaos_mod.ChaosRun(scale=scale, out=Path(out) if out else chaos_mod.default_out(), pin=pin)
    console.print(f"chaos run at scale {scale:g} into {run.out}; pinning: {run.pinning()}")
    passed, report = chaos_mod.run_chaos(run)
    if report is not None:
        console.print(report.read_text(), markup=False)
        console.print(f"[bold]report:[/] {report}")
    if not passed:
        raise Exit("chaos run: some tests failed; the report has what they measured", code=1)


ns = Collection("services", chaos)
# At the root only: `invoke serve` / `invoke smoke`, typed every day.
ROOT_TASKS = [serve, smoke]
