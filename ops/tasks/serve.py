"""invoke task that runs both services locally, without a cluster."""

from __future__ import annotations

import time

from invoke import Collection, Context, task
from rich.console import Console

console = Console()


@task(help={"only": "Run one service: image-classifier or text-classifier (default: both)."})
def serve(c: Context, only: str = "") -> None:
    """Build the demo bundles if needed, start both services on 127.0.0.1:8080/8081, and serve until Ctrl-C."""
    from ops.models import build_all
    from ops.serve import SERVICES, running

    build_all(progress=console.log)
    chosen = tuple(s for s in SERVICES if not only or s.name == only)
    if not chosen:
        raise SystemExit(f"unknown service {only!r}; choose from {[s.name for s in SERVICES]}")
    with running(chosen) as ready:
        for name, (service, seconds) in ready.items():  # the services log to this terminal
            console.print(f"[green]{name}[/] ready in {seconds:.1f}s at {service.url}  (docs: {service.url}/docs)")
        console.print("Ctrl-C stops them (they drain first).")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            console.print("stopping")


ns = Collection("serve")
ROOT_TASKS = [serve]
