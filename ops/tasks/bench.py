"""invoke tasks for benchmarks and capacity: `bench` (collection default), `bench.wheels`, root `load`, `capacity`."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from invoke import Collection, Context, Exit, task

from ops.core import REPO_ROOT


def _defaults(c: Context, section: str) -> dict[str, Any]:
    bench_config = c.config.get("bench", {}) or {}
    return dict(bench_config.get(section, {}) or {})


def _results_root(c: Context, kind: str) -> Path:
    root = (c.config.get("bench", {}) or {}).get("results", "results")
    return (REPO_ROOT / root / kind).resolve()


@task(
    name="bench",
    auto_shortflags=False,
    help={
        "device": "auto (cpu, plus cuda when present), cpu or cuda.",
        "full": "The full CPU matrix (batches up to 64, channels_last); slow on 2 cores.",
        "compile": "Add torch.compile (and CUDA-graph) variants.",
        "models": "Comma list of models for the model-only benchmarks: resnet50,demo.",
        "batches": "Override batch sizes, e.g. 1,16.",
        "select": "Only benchmarks matching this pytest -k expression.",
        "save": "Also save the run under .benchmarks/ with this name (pytest-benchmark --benchmark-save).",
        "compare": "Compare against a saved run: 'last' or a run id/prefix (pytest-benchmark --benchmark-compare).",
        "max_time": "pytest-benchmark max seconds per benchmark (after min rounds).",
        "min_rounds": "pytest-benchmark minimum rounds per benchmark.",
        "ratios": "Measure the serving ratios (needs the demo bundle; default on).",
        "ratio_models": "Models served for the ratio table: demo and/or resnet50.",
        "batch_size": "Service MAX_BATCH_SIZE and model-only batch size for the ratios.",
        "concurrency": "Closed-loop client levels for the ratios, e.g. 1,4,16,32.",
        "level_duration": "Seconds per closed-loop level.",
        "quick": "CI smoke: demo model, batch 1 and 4, one round, HTTP batching-off only, 1 s load levels.",
        "results": "Results folder (default results/bench/<timestamp>).",
        "pin": "CPU ratio runs, comma list: auto (service and client on disjoint CPUs), none (shared, the old way), "
        "or SERVICE_CPUS:CLIENT_CPUS such as 1:0.",
        "peers": "Also compare with the peer servers (LitServe, KServe) in the same run: peers.json, peers.png.",
        "pytest": "Run the pytest-benchmark suites (off: only the ratios and peers).",
    },
)
def bench(
    c: Context,
    device: str = "auto",
    full: bool = False,
    compile: bool = False,
    models: str = "resnet50,demo",
    batches: str = "",
    select: str = "",
    save: str = "",
    compare: str = "",
    max_time: float = 0.5,
    min_rounds: int = 3,
    ratios: bool = True,
    ratio_models: str = "demo",
    batch_size: int = 16,
    concurrency: str = "1,4,16,32",
    level_duration: float = 3.0,
    quick: bool = False,
    results: str = "",
    pin: str = "auto,none",
    peers: bool = False,
    pytest: bool = True,
) -> None:
    """Run the pytest-benchmark suites and the serving ratios; write benchmarks.json, ratios.json and summary.md."""
    import os

    from ops import benchratios
    from ops.benchreport import (
        PytestBenchOptions,
        console,
        new_results_dir,
        print_ratio_table,
        pytest_argv,
        write_summary,
    )

    folder = Path(results).resolve() if results else new_results_dir(_results_root(c, "bench"))
    folder.mkdir(parents=True, exist_ok=True)
    if quick:
        models, batches, max_time, min_rounds = "demo", batches or "1,4", 0.05, 1
        concurrency, level_duration, batch_size = "1,4", 1.0, 4
        pin = pin.split(",")[0]  # one ratio run: pinned where the machine allows
    opts = PytestBenchOptions(
        results_dir=folder,
        device=device,
        full=full,
        compile=compile,
        models=models,
        batches=batches,
        max_time=max_time,
        min_rounds=min_rounds,
        save=save,
        compare=compare,
        select=select,
        http_batching="off" if quick else "on,off",  # quick: one service start for the HTTP benchmark, not two
    )
    command = shlex.join(pytest_argv(opts))
    commands = [command] if pytest else []
    if c.config.run.dry:
        if pytest:
            c.run(command, echo=True, pty=False)
        return
    from ops.benchmodels import ensure_demo_bundle

    ensure_demo_bundle()  # built once here, not inside a benchmark fixture
    load_before = os.getloadavg()[0]
    if pytest:
        c.run(command, echo=True, pty=False)
    measured: list[dict[str, Any]] = []
    if ratios:
        devices = ["cpu"] if device == "cpu" else (["cuda"] if device == "cuda" else _auto_devices())
        for ratio_device in devices:
            for model in [m for m in ratio_models.split(",") if m]:
                for pinning in pin.split(",") if ratio_device == "cpu" else ["none"]:
                    cfg = benchratios.RatioConfig(
                        model=model,
                        device=ratio_device,
                        batch_size=batch_size,
                        concurrency=tuple(int(x) for x in concurrency.split(",")),
                        level_duration_s=level_duration,
                        overhead_requests=10 if quick else 50,
                        model_only_min_time_s=0.2 if quick else 2.0,
                        pin=pinning,
                    )
                    commands.append(f"ops.benchratios.measure({cfg})")
                    result = benchratios.measure(cfg, folder, echo=console.print)
                    measured.append(result.to_dict())
        print_ratio_table(measured)
    if peers:
        commands.append(_run_peers(folder, batch_size=batch_size, quick=quick, pin=pin.split(",")[0]))
    load = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
    summary = write_summary(folder, measured, commands=commands, title="Benchmark summary", load_average=load)
    console.print(f"summary: {summary}")


def _run_peers(folder: Path, *, batch_size: int, quick: bool, pin: str, p99_bound: float = 100.0) -> str:
    """The peer comparison into `folder` (peers.json, peers.png); returns the call, for the summary."""
    from ops.benchreport import console
    from ops.perf.peers import PeerConfig, compare
    from ops.perf.plot import plot_peers

    cfg = PeerConfig(max_batch_size=batch_size, p99_bound_ms=p99_bound, pin=pin)
    if quick:
        cfg.concurrency, cfg.level_duration_s = (1, 4), 1.0
    document = compare(cfg, folder, echo=console.print)
    if document["servers"]:
        plot_peers(document, folder / "peers.png")
    return f"ops.perf.peers.compare({cfg})"


@task(
    name="peers",
    auto_shortflags=False,
    help={
        "batch_size": "Largest batch of every server's dynamic batching (the wait is 5 ms for all).",
        "p99_bound": "Common p99 bound in ms for 'throughput within the bound'.",
        "pin": "auto (service and client on disjoint CPUs), none, or SERVICE_CPUS:CLIENT_CPUS such as 1:0.",
        "quick": "Smoke size: 1 and 4 clients, 1 s levels.",
        "results": "Results folder (default results/bench/<timestamp>-peers).",
    },
)
def peers_task(
    c: Context,
    batch_size: int = 16,
    p99_bound: float = 100.0,
    pin: str = "auto",
    quick: bool = False,
    results: str = "",
) -> None:
    """Our service, LitServe and KServe on the same bundle, client and cores: peers.json, peers.png, summary.md."""
    import os

    from ops.benchreport import new_results_dir, write_summary

    folder = Path(results).resolve() if results else new_results_dir(_results_root(c, "bench"), "peers")
    if c.config.run.dry:
        print(f"would compare ours, litserve and kserve into {folder}")
        return
    load_before = os.getloadavg()[0]
    command = _run_peers(folder, batch_size=batch_size, quick=quick, pin=pin, p99_bound=p99_bound)
    load = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
    write_summary(folder, [], commands=[command], title="Peer servers", load_average=load)
    print(f"summary: {folder / 'summary.md'}")


@task(
    name="profile",
    auto_shortflags=False,
    help={
        "requests": "Sequential lone requests per service (batching on, then off).",
        "pin": "auto, none, or SERVICE_CPUS:CLIENT_CPUS such as 1:0.",
        "rate": "py-spy samples per second.",
        "results": "Results folder (default results/bench/<timestamp>-profile).",
    },
)
def profile_task(c: Context, requests: int = 200, pin: str = "auto", rate: int = 1000, results: str = "") -> None:
    """One request socket to socket: stage timings of lone requests and a py-spy profile of the service."""
    from ops.benchreport import new_results_dir

    folder = Path(results).resolve() if results else new_results_dir(_results_root(c, "bench"), "profile")
    argv = ["python", "-m", "ops.perf.profile", str(folder), f"--requests={requests}", f"--pin={pin}", f"--rate={rate}"]
    c.run(shlex.join(argv), echo=True, pty=False)


def _auto_devices() -> list[str]:
    from ops.benchmodels import cuda_available

    return ["cpu", "cuda"] if cuda_available() else ["cpu"]


def _service_context(url: str, model: str, log_path: Path) -> Any:
    """Either nothing (a given URL) or a local image service allowed to fetch from the loopback image server."""
    from contextlib import nullcontext

    from ops.benchmodels import bundle_for
    from ops.localservice import LocalService

    if url:
        return nullcontext(None)
    settings = {
        "MODEL_URI": str(bundle_for(model)),
        # The loopback image server's port is chosen when it starts, after the service: any port on 127.0.0.1.
        "FETCH_ALLOWED_HOSTS": "127.0.0.1:*",
        "LOG_LEVEL": "warning",
    }
    return LocalService("image_classifier", settings, log_path=log_path)


@task(
    name="load",
    auto_shortflags=False,
    help={
        "url": "Base URL of the image service (or a kubectl port-forward); empty: start a local one on 127.0.0.1.",
        "rate": "Requests per second (constant rate).",
        "duration": "Attack duration, vegeta syntax (10s, 1m).",
        "hist_buckets": "Histogram bucket bounds, vegeta syntax: 0,10ms,50ms,1s.",
        "model": "Bundle for the local service: demo, resnet50, or a bundle directory path.",
        "step": "Step mode: raise the rate from --start-rate until the p99 SLO or the success ratio breaks.",
        "start_rate": "Step mode: first rate.",
        "max_rate": "Step mode: highest rate tried.",
        "factor": "Step mode: multiply the rate by this per step.",
        "increment": "Step mode: add this per step instead of multiplying (when > 0).",
        "slo_p99": "Step mode: p99 SLO in milliseconds.",
        "min_success": "Step mode: lowest acceptable success ratio.",
        "images": "Distinct images served by the loopback image server.",
        "raw": "Send the images as raw JPEG bodies (for a service in a cluster, which cannot reach this machine).",
        "results": "Results folder (default results/load/<timestamp>).",
    },
)
def load(
    c: Context,
    url: str = "",
    rate: float = 0.0,
    duration: str = "",
    hist_buckets: str = "",
    model: str = "demo",
    step: bool = False,
    start_rate: float = 0.0,
    max_rate: float = 0.0,
    factor: float = 0.0,
    increment: float = 0.0,
    slo_p99: float = 0.0,
    min_success: float = 0.99,
    images: int = 8,
    results: str = "",
    raw: bool = False,
) -> None:
    """vegeta load test against /v1/predict with {"image_url": ...} bodies from a loopback image server."""
    from ops import load as load_mod
    from ops.benchmodels import machine_info
    from ops.benchreport import console

    d = _defaults(c, "load")
    rate = rate or float(d.get("rate", 20))
    duration = duration or str(d.get("duration", "10s"))
    hist_buckets = hist_buckets or str(d.get("hist_buckets", load_mod.DEFAULT_HIST_BUCKETS))
    folder = Path(results).resolve() if results else _results_root(c, "load") / load_mod.timestamp()
    if c.config.run.dry:
        what = "step up the rate" if step else f"attack at {rate:g} rps"
        console.print(f"would {what} for {duration} per run against {url or 'a local image service'} into {folder}")
        return
    folder.mkdir(parents=True, exist_ok=True)
    with _service_context(url, model, folder / "service.log") as service:
        target = url or service.url
        plan = load_mod.LoadPlan(
            service_url=target,
            results_root=folder.parent,
            image_count=images,
            hist_buckets=hist_buckets,
            raw=raw,
        )
        with load_mod.LoadSession(
            plan, folder=folder, echo=lambda line: console.print(f"$ {line}", style="dim", markup=False, soft_wrap=True)
        ) as session:
            if service is not None:
                session.cpu_probe = service.cpu_seconds
            if not step:
                result = session.constant(rate, duration)
                console.print((folder / "report.txt").read_text(), markup=False, highlight=False, soft_wrap=True)
                console.print(f"results: {folder} (report.txt, report.json, hist.txt, plot.html)")
                if result.success < 1.0:
                    console.print(f"[yellow]success ratio {result.success:.2%}[/yellow]")
                return
            rates = load_mod.step_rates(
                start_rate or float(d.get("start_rate", 5)),
                factor or float(d.get("factor", 2)),
                max_rate or float(d.get("max_rate", 320)),
                increment,
            )
            slo = slo_p99 or float(d.get("slo_p99_ms", 250))

            def report(res: load_mod.LoadResult, ok: bool) -> None:
                mark = "[green]ok[/green]" if ok else "[red]broken[/red]"
                console.print(
                    f"{res.rate:>8g} rps  p99 {res.latency_ms['p99']:9.2f} ms  success {res.success:.2%}  {mark}"
                )

            run = session.step(rates, duration, slo_p99_ms=slo, min_success=min_success, on_step=report)
            run.meta = {
                "machine": _machine_line(machine_info()),
                "model": model,
                "url": target,
            }
            run.save(folder / "steps.json")
            best = run.sustainable()
            console.print(f"highest sustainable rate per pod: {best.rate if best else 0:g} rps (p99 <= {slo:g} ms)")
            console.print(f"results: {folder / 'steps.json'}")


def _machine_line(info: dict[str, Any]) -> str:
    device = info.get("gpu") or "CPU only"
    return f"{device}; {info.get('cpu')} x {info.get('cpu_count')}; torch {info.get('torch')}"


@task(
    name="capacity",
    auto_shortflags=False,
    help={
        "target_rps": "Peak requests per second the service must carry.",
        "slo_p99": "p99 latency SLO in milliseconds.",
        "headroom": "Fraction of each pod's sustainable rate kept spare (0.3 = plan at 70%).",
        "steps": "steps.json of a step run (default: the newest under results/load/).",
        "service": "Deployment name in the eks-prod overlay: image-classifier or text-classifier.",
        "min_replicas": "Replica floor (availability across zones).",
        "run_step": "Run a step load test first (same flags as `load --step`, with defaults from invoke.yaml).",
        "step_duration": "With --run-step: seconds per step, vegeta syntax.",
        "max_rate": "With --run-step: highest rate tried.",
        "results": "Report folder (default results/capacity/<timestamp>).",
    },
)
def capacity(
    c: Context,
    target_rps: float = 0.0,
    slo_p99: float = 0.0,
    headroom: float = -1.0,
    steps: str = "",
    service: str = "image-classifier",
    min_replicas: int = 2,
    run_step: bool = False,
    step_duration: str = "",
    max_rate: float = 0.0,
    results: str = "",
) -> None:
    """Capacity plan from a step run: replicas, nodes per node group, HPA target; report with a latency-vs-rate plot."""
    from ops import capacity as cap
    from ops.benchreport import console
    from ops.load import StepRun, find_latest, timestamp

    d = _defaults(c, "capacity")
    target_rps = target_rps or float(d.get("target_rps", 100))
    slo_p99 = slo_p99 or float(d.get("slo_p99_ms", 250))
    headroom = headroom if headroom >= 0 else float(d.get("headroom", 0.3))
    steps_path = Path(steps).resolve() if steps else None
    if run_step or (steps_path is None and find_latest(_results_root(c, "load"), "steps.json") is None):
        folder = _results_root(c, "load") / timestamp()
        load(
            c,
            step=True,
            slo_p99=slo_p99,
            duration=step_duration or "5s",
            max_rate=max_rate,
            results=str(folder),
        )
        steps_path = folder / "steps.json"
        if c.config.run.dry:
            return
    steps_path = steps_path or find_latest(_results_root(c, "load"), "steps.json")
    if steps_path is None or not steps_path.is_file():
        raise Exit(
            f"no step run found (looked for {steps_path}); run `invoke load --step` first",
            code=1,
        )
    run = StepRun.load(steps_path)
    plan = cap.plan_capacity(
        run,
        service=service,
        target_rps=target_rps,
        slo_p99_ms=slo_p99,
        headroom=headroom,
        min_replicas=min_replicas,
        steps_file=str(steps_path),
    )
    out = Path(results).resolve() if results else _results_root(c, "capacity") / timestamp()
    written = cap.write_report(plan, run, out)
    console.print(
        json.dumps(
            {k: plan.to_dict()[k] for k in ("replicas", "nodegroup", "nodes", "hpa")},
            indent=2,
        )
    )
    for note in plan.notes:
        console.print(f"- {note}")
    console.print(f"report: {written['report']}  plot: {written['plot']}")


@task(
    auto_shortflags=False,
    help={
        "dest": "Folder to fill with wheels (created).",
        "python_versions": "Comma list of CPython versions the GPU machine may run (binary wheels per version).",
        "vegeta": "Also copy the vegeta binary into <dest>/bin (the ratio runner prefers it over httpx).",
    },
)
def wheels(
    c: Context,
    dest: str = "build/gpu-wheels",
    python_versions: str = "3.11,3.12,3.13",
    vegeta: bool = True,
) -> None:
    """Fill a folder with the wheels bench/gpu/run.sh needs on a CUDA machine that already has torch (from uv.lock)."""
    from ops import gpuwheels

    folder = Path(dest).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    pins = gpuwheels.pinned_requirements()
    requirements = folder / "requirements.txt"
    requirements.write_text(gpuwheels.requirements_text(pins))
    for argv in gpuwheels.download_commands(requirements, folder, python_versions.split(",")):
        c.run(shlex.join(argv), echo=True, pty=False)
    if vegeta and not c.config.run.dry:
        from ops.load import vegeta_path

        (folder / "bin").mkdir(exist_ok=True)
        c.run(
            shlex.join(["cp", str(vegeta_path()), str(folder / "bin" / "vegeta")]),
            echo=True,
        )
    if c.config.run.dry:
        return
    verified, unlocked = gpuwheels.verify(folder)
    missing = set(pins) - gpuwheels.wheel_projects(folder)
    if missing:
        raise Exit(f"no wheel downloaded for: {', '.join(sorted(missing))}", code=1)
    gpuwheels.console.print(
        f"{len(pins)} packages, {len(verified) + len(unlocked)} wheels -> {folder} "
        f"({len(verified)} match uv.lock hashes; {len(unlocked)} other-CPython builds of locked versions: "
        f"{', '.join(unlocked) or '-'}; all in SHA256SUMS)"
    )


ns = Collection("bench")
# `invoke bench` runs the collection's default task (a root task may not share the collection's name).
ns.add_task(bench, default=True)
ns.add_task(wheels)
ns.add_task(peers_task)
ns.add_task(profile_task)
ROOT_TASKS = [load, capacity]
