"""The `invoke bench` flow: the pytest-benchmark suites in bench/, the serving ratios, the peer comparison, and the
summary of one run folder."""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ops import core
from ops.core import REPO_ROOT, console
from ops.perf.defaults import BATCH_SIZE, CONCURRENCY, LEVEL_DURATION_S, PEER_P99_BOUND_MS
from ops.perf.report import print_ratio_table, write_summary


@dataclass
class PytestBenchOptions:
    """How `pytest bench` is called."""

    results_dir: Path
    device: str = "auto"
    full: bool = False
    compile: bool = False
    models: str = "resnet50,demo"
    batches: str = ""
    max_time: float = 0.5
    min_rounds: int = 3
    save: str = ""
    compare: str = ""
    select: str = ""
    http_batching: str = "on,off"
    python: str = sys.executable


def pytest_argv(opts: PytestBenchOptions) -> list[str]:
    """argv for the pytest-benchmark run; JSON always goes to <results_dir>/benchmarks.json."""
    argv = [
        opts.python,
        "-m",
        "pytest",
        str(REPO_ROOT / "bench"),
        "-q",
        "-p",
        "no:cacheprovider",
        f"--rootdir={REPO_ROOT}",
        f"--benchmark-json={opts.results_dir / 'benchmarks.json'}",
        f"--benchmark-max-time={opts.max_time}",
        f"--benchmark-min-rounds={opts.min_rounds}",
        "--benchmark-columns=median,iqr,ops,rounds",
        "--benchmark-sort=name",
        f"--benchmark-storage={REPO_ROOT / '.benchmarks'}",
        f"--bench-device={opts.device}",
        f"--bench-models={opts.models}",
    ]
    if opts.http_batching != "on,off":
        argv.append(f"--bench-http-batching={opts.http_batching}")
    if opts.full:
        argv.append("--bench-full")
    if opts.compile:
        argv.append("--bench-compile")
    if opts.batches:
        argv.append(f"--bench-batches={opts.batches}")
    if opts.save:
        argv.append(f"--benchmark-save={opts.save}")
    if opts.compare:
        argv.append("--benchmark-compare" if opts.compare == "last" else f"--benchmark-compare={opts.compare}")
    if opts.select:
        argv += ["-k", opts.select]
    return argv


@dataclass
class BenchOptions:
    """What `invoke bench` was asked for (the pytest-benchmark flags are in `pytest`)."""

    pytest: PytestBenchOptions
    run_pytest: bool = True
    ratios: bool = True
    ratio_models: str = "demo"
    batch_size: int = BATCH_SIZE
    concurrency: str = ",".join(map(str, CONCURRENCY))
    level_duration: float = LEVEL_DURATION_S
    pin: str = "auto,none"
    peers: bool = False
    perf_analyzer: bool = False
    quick: bool = False


def quick(opts: BenchOptions) -> BenchOptions:
    """The CI smoke size: demo model, batch 1 and 4, one round, HTTP batching-off only, 1 s load levels, one
    ratio run (pinned where the machine allows)."""
    pytest = dataclasses.replace(
        opts.pytest,
        models="demo",
        batches=opts.pytest.batches or "1,4",
        max_time=0.05,
        min_rounds=1,
        http_batching="off",  # one service start for the HTTP benchmark, not two
    )
    return dataclasses.replace(
        opts, pytest=pytest, concurrency="1,4", level_duration=1.0, batch_size=4, pin=opts.pin.split(",")[0]
    )


def _devices(device: str) -> list[str]:
    if device in ("cpu", "cuda"):
        return [device]
    from ops.perf.benchmodels import cuda_available

    return ["cpu", "cuda"] if cuda_available() else ["cpu"]


def run_bench(opts: BenchOptions) -> Path | None:
    """pytest-benchmark, the serving ratios (and the peers) into opts.pytest.results_dir; writes summary.md and
    returns it. Under a dry run it shows the pytest command and returns None."""
    if opts.quick:
        opts = quick(opts)
    folder = opts.pytest.results_dir
    argv = pytest_argv(opts.pytest)
    if core.is_dry():
        if opts.run_pytest:
            core.run(argv)
        if opts.ratios:
            console.print(f"would measure the serving ratios of {opts.ratio_models} into {folder}")
        return None
    from ops.perf import ratios
    from ops.perf.benchmodels import ensure_demo_bundle

    folder.mkdir(parents=True, exist_ok=True)
    ensure_demo_bundle()  # built once here, not inside a benchmark fixture
    load_before = os.getloadavg()[0]
    commands = []
    if opts.run_pytest:
        commands.append(" ".join(argv))
        core.run(argv, capture=False, echo=True)
    measured: list[dict[str, Any]] = []
    if opts.ratios:
        for device in _devices(opts.pytest.device):
            for model in [m for m in opts.ratio_models.split(",") if m]:
                for pinning in opts.pin.split(",") if device == "cpu" else ["none"]:
                    cfg = ratios.RatioConfig(
                        model=model,
                        device=device,
                        batch_size=opts.batch_size,
                        concurrency=tuple(int(x) for x in opts.concurrency.split(",")),
                        level_duration_s=opts.level_duration,
                        overhead_requests=10 if opts.quick else 50,
                        model_only_min_time_s=0.2 if opts.quick else 2.0,
                        pin=pinning,
                    )
                    commands.append(f"ops.perf.ratios.measure({cfg})")
                    measured.append(ratios.measure(cfg, folder, echo=console.print).to_dict())
        print_ratio_table(measured)
    if opts.peers:
        commands.append(run_peers(folder, batch_size=opts.batch_size, quick=opts.quick, pin=opts.pin.split(",")[0]))
    if opts.perf_analyzer:
        commands.append(run_clients(folder, batch_size=opts.batch_size, quick=opts.quick, pin=opts.pin.split(",")[0]))
    load = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
    summary = write_summary(folder, measured, commands=commands, title="Benchmark summary", load_average=load)
    console.print(f"summary: {summary}")
    return summary


def run_peers(
    folder: Path,
    *,
    batch_size: int = BATCH_SIZE,
    quick: bool = False,
    pin: str = "auto",
    p99_bound: float = PEER_P99_BOUND_MS,
) -> str:
    """The peer comparison into `folder` (peers.json, peers.png); returns the call, for the summary."""
    from ops.perf.peers import PeerConfig, compare
    from ops.perf.plot import plot_peers

    cfg = PeerConfig(max_batch_size=batch_size, p99_bound_ms=p99_bound, pin=pin)
    if quick:
        cfg.concurrency, cfg.level_duration_s = (1, 4), 1.0
    document = compare(cfg, folder, echo=console.print)
    if document["servers"]:
        plot_peers(document, folder / "peers.png")
    return f"ops.perf.peers.compare({cfg})"


def run_clients(folder: Path, *, batch_size: int = BATCH_SIZE, quick: bool = False, pin: str = "auto") -> str:
    """perf_analyzer beside vegeta against one image service (clients.json, clients.md); returns the call."""
    from ops.perf.clients import ClientsConfig, compare_clients

    cfg = ClientsConfig(max_batch_size=batch_size, pin=pin)
    if quick:
        cfg.concurrency, cfg.level_duration_s = (1, 4), 1.5
    compare_clients(cfg, folder, echo=console.print)
    console.print((folder / "clients.md").read_text(), markup=False)
    return f"ops.perf.clients.compare_clients({cfg})"


def run_peers_alone(folder: Path, **kwargs: Any) -> Path | None:
    """`invoke bench.peers`: the peer comparison and a summary.md of its own."""
    if core.is_dry():
        console.print(f"would compare ours, litserve and kserve into {folder}")
        return None
    load_before = os.getloadavg()[0]
    command = run_peers(folder, **kwargs)
    load = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
    summary = write_summary(folder, [], commands=[command], title="Peer servers", load_average=load)
    console.print(f"summary: {summary}")
    return summary
