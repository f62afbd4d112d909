"""invoke tasks for benchmarks and capacity: `bench` (collection default), `bench.peers`, `bench.profile`,
`bench.wheels`, `bench.load` and `bench.capacity` (also at the root). The flows live in ops.perf."""

from __future__ import annotations

from pathlib import Path

from invoke import Collection, Context

from ops import core
from ops.core import REPO_ROOT, console
from ops.perf import bench as bench_mod
from ops.perf import capacity as capacity_mod
from ops.perf import defaults, gpuwheels
from ops.perf import load as load_mod
from ops.perf.report import new_run_dir
from ops.tasks.common import ops_task


def _folder(results: str, kind: str, label: str = "") -> Path:
    return Path(results).resolve() if results else new_run_dir(kind, label)


@ops_task(
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
        "ratios": "Measure the serving ratios (needs the demo bundle).",
        "ratio_models": "Models served for the ratio table: demo and/or resnet50.",
        "batch_size": "Service MAX_BATCH_SIZE and model-only batch size for the ratios.",
        "concurrency": "Closed-loop client levels for the ratios.",
        "level_duration": "Seconds per closed-loop level.",
        "quick": "CI smoke: demo model, batch 1 and 4, one round, HTTP batching-off only, 1 s load levels.",
        "results": "Results folder (default results/bench/<timestamp>).",
        "pin": "CPU ratio runs, comma list: auto (service and client on disjoint CPUs), none (shared, the old way), "
        "or SERVICE_CPUS:CLIENT_CPUS such as 1:0.",
        "peers": "Also compare with the peer servers (LitServe, KServe) in the same run: peers.json, peers.png.",
        "perf_analyzer": "Also drive the image service with Triton's perf_analyzer beside vegeta: clients.md.",
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
    batch_size: int = defaults.BATCH_SIZE,
    concurrency: str = ",".join(map(str, defaults.CONCURRENCY)),
    level_duration: float = defaults.LEVEL_DURATION_S,
    quick: bool = False,
    results: str = "",
    pin: str = "auto,none",
    peers: bool = False,
    perf_analyzer: bool = False,
    pytest: bool = True,
) -> None:
    """Run the pytest-benchmark suites and the serving ratios; write benchmarks.json, ratios.json and summary.md."""
    if peers:
        core.ensure_group("peers")
    pytest_opts = bench_mod.PytestBenchOptions(
        results_dir=_folder(results, "bench"),
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
    )
    bench_mod.run_bench(
        bench_mod.BenchOptions(
            pytest=pytest_opts,
            run_pytest=pytest,
            ratios=ratios,
            ratio_models=ratio_models,
            batch_size=batch_size,
            concurrency=concurrency,
            level_duration=level_duration,
            pin=pin,
            peers=peers,
            perf_analyzer=perf_analyzer,
            quick=quick,
        )
    )


@ops_task(
    name="clients",
    auto_shortflags=False,
    help={
        "concurrency": "Closed-loop client counts, comma list.",
        "level_duration": "Seconds per client count and client.",
        "batch_size": "Service MAX_BATCH_SIZE.",
        "model": "demo, resnet50 or a bundle directory.",
        "pin": "auto (service and client on disjoint CPUs), none, or SERVICE_CPUS:CLIENT_CPUS such as 1:0.",
        "results": "Results folder (default results/bench/<timestamp>-clients).",
    },
)
def clients_task(
    c: Context,
    concurrency: str = "1,2,4,8,16",
    level_duration: float = 3.0,
    batch_size: int = defaults.BATCH_SIZE,
    model: str = "demo",
    pin: str = "auto",
    results: str = "",
) -> None:
    """perf_analyzer (v2 binary) and vegeta (the same v2 request, and /v1 raw JPEG) against one image service."""
    from ops import core
    from ops.perf.clients import ClientsConfig, compare_clients

    cfg = ClientsConfig(
        model=model,
        max_batch_size=batch_size,
        concurrency=tuple(int(x) for x in concurrency.split(",")),
        level_duration_s=level_duration,
        pin=pin,
    )
    folder = _folder(results, "bench", "clients")
    if core.is_dry():
        console.print(f"would drive one image service with perf_analyzer and vegeta ({cfg}) into {folder}")
        return
    compare_clients(cfg, folder, echo=console.print)
    console.print((folder / "clients.md").read_text(), markup=False)


@ops_task(
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
    batch_size: int = defaults.BATCH_SIZE,
    p99_bound: float = defaults.PEER_P99_BOUND_MS,
    pin: str = "auto",
    quick: bool = False,
    results: str = "",
) -> None:
    """Our service, LitServe and KServe on the same bundle, client and cores: peers.json, peers.png, summary.md."""
    folder = _folder(results, "bench", "peers")
    core.ensure_group("peers")
    bench_mod.run_peers_alone(folder, batch_size=batch_size, quick=quick, pin=pin, p99_bound=p99_bound)


@ops_task(
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
    from ops.perf import profile

    profile.run_profile(_folder(results, "bench", "profile"), requests=requests, pin=pin, rate_hz=rate)


@ops_task(
    name="load",
    auto_shortflags=False,
    help={
        "url": "Base URL of the image service (or a kubectl port-forward); empty: start a local one on 127.0.0.1.",
        "rate": "Requests per second (constant rate).",
        "duration": "Attack duration, vegeta syntax (10s, 1m); per step in step mode.",
        "hist_buckets": "Histogram bucket bounds, vegeta syntax.",
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
    rate: float = load_mod.RATE,
    duration: str = load_mod.DURATION,
    hist_buckets: str = load_mod.HIST_BUCKETS,
    model: str = "demo",
    step: bool = False,
    start_rate: float = load_mod.START_RATE,
    max_rate: float = load_mod.MAX_RATE,
    factor: float = load_mod.FACTOR,
    increment: float = 0.0,
    slo_p99: float = load_mod.SLO_P99_MS,
    min_success: float = load_mod.MIN_SUCCESS,
    images: int = load_mod.IMAGES,
    results: str = "",
    raw: bool = False,
) -> None:
    """vegeta load test against /v1/predict with {"image_url": ...} bodies from a loopback image server."""
    opts = load_mod.LoadOptions(
        url=url,
        model=model,
        rate=rate,
        duration=duration,
        hist_buckets=hist_buckets,
        images=images,
        raw=raw,
        step=step,
        start_rate=start_rate,
        factor=factor,
        max_rate=max_rate,
        increment=increment,
        slo_p99_ms=slo_p99,
        min_success=min_success,
    )
    load_mod.run_load(opts, _folder(results, "load"))


@ops_task(
    name="capacity",
    auto_shortflags=False,
    help={
        "target_rps": "Peak requests per second the service must carry.",
        "slo_p99": "p99 latency SLO in milliseconds.",
        "headroom": "Fraction of each pod's sustainable rate kept spare (0.3 = plan at 70%).",
        "steps": "steps.json of a step run (default: the newest under results/load/).",
        "service": "Deployment name in the eks-prod overlay: image-classifier or text-classifier.",
        "min_replicas": "Replica floor (availability across zones).",
        "run_step": "Run a step load test first (as `load --step`).",
        "step_duration": "With --run-step: seconds per step, vegeta syntax.",
        "max_rate": "With --run-step: highest rate tried.",
        "results": "Report folder (default results/capacity/<timestamp>).",
    },
)
def capacity(
    c: Context,
    target_rps: float = capacity_mod.TARGET_RPS,
    slo_p99: float = load_mod.SLO_P99_MS,
    headroom: float = capacity_mod.HEADROOM,
    steps: str = "",
    service: str = capacity_mod.SERVICE,
    min_replicas: int = capacity_mod.MIN_REPLICAS,
    run_step: bool = False,
    step_duration: str = capacity_mod.STEP_DURATION,
    max_rate: float = load_mod.MAX_RATE,
    results: str = "",
) -> None:
    """Capacity plan from a step run: replicas, nodes per node group, HPA target; report with a latency-vs-rate plot."""
    opts = capacity_mod.CapacityOptions(
        service=service,
        target_rps=target_rps,
        slo_p99_ms=slo_p99,
        headroom=headroom,
        min_replicas=min_replicas,
        steps=Path(steps).resolve() if steps else None,
        run_step=run_step,
        step_duration=step_duration,
        max_rate=max_rate,
    )
    capacity_mod.run_capacity(opts, Path(results).resolve() if results else None)


@ops_task(
    auto_shortflags=False,
    help={
        "dest": "Folder to fill with wheels (created).",
        "python_versions": "Comma list of CPython versions the GPU machine may run (binary wheels per version).",
        "vegeta": "Also copy the vegeta binary into <dest>/bin (the ratio runner prefers it over httpx).",
    },
)
def wheels(
    c: Context,
    dest: str = str(gpuwheels.DEST.relative_to(REPO_ROOT)),
    python_versions: str = ",".join(gpuwheels.PYTHON_VERSIONS),
    vegeta: bool = True,
) -> None:
    """Fill a folder with the wheels bench/gpu/run.sh needs on a CUDA machine that already has torch (from uv.lock)."""
    gpuwheels.fill(Path(dest).resolve(), python_versions.split(","), vegeta=vegeta)


ns = Collection("bench")
# `invoke bench` runs the collection's default task (a root task may not share the collection's name).
ns.add_task(bench, default=True)
ns.add_task(wheels)
ns.add_task(peers_task)
ns.add_task(clients_task)
ns.add_task(profile_task)
ns.add_task(load)
ns.add_task(capacity)
