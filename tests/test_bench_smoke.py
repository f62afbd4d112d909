"""Smoke tests for `invoke bench`, `invoke load`, `invoke capacity` and bench/gpu: they run and write parseable files.

Timings are never asserted. The slow ones (a few services started, short attacks) carry the `bench` marker.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from ops.capacity import (
    NodeGroup,
    PodSpec,
    load_nodegroups,
    plan_capacity,
    pods_per_node,
    write_report,
)
from ops.gpuwheels import pinned_requirements, requirements_text
from ops.load import LoadResult, StepRun, step_rates
from ops.perf.peers import PEER_PACKAGES
from ops.perf.pinning import UNPINNED, Pinning, parse_cpu_list, pinning_from
from ops.perf.profile import categorize

REPO = Path(__file__).resolve().parent.parent
INVOKE = [sys.executable, "-m", "invoke"]


def run(argv: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run from the repo root; show the output when it fails."""
    proc = subprocess.run(
        argv,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def _step(rate: float, p99: float, success: float = 1.0, cpu: float | None = None) -> LoadResult:
    latency = {
        "min": 1.0,
        "mean": p99 / 2,
        "p50": p99 / 3,
        "p90": p99 / 1.5,
        "p95": p99 / 1.2,
        "p99": p99,
        "max": p99 * 2,
    }
    return LoadResult(
        rate=rate,
        duration="10s",
        requests=int(rate * 10),
        throughput=rate * success,
        success=success,
        latency_ms=latency,
        status_codes={"200": int(rate * 10)},
        errors=[],
        folder="",
        service_cpu_seconds=cpu,
    )


def test_plan_from_steps_uses_node_groups_and_headroom(tmp_path: Path) -> None:
    run_ = StepRun(
        service_url="http://127.0.0.1:1",
        slo_p99_ms=100,
        min_success=0.99,
        step_duration="10s",
        steps=[_step(10, 20, cpu=5), _step(20, 40, cpu=10), _step(40, 90, cpu=5), _step(80, 400)],
        folder="",
    )
    best = run_.sustainable()
    assert best is not None
    assert best.rate == 40
    cpu_group = next(g for g in load_nodegroups() if g.name == "cpu-general")
    spec = PodSpec(
        "text-classifier",
        {"cpu": 1.0, "memory": 2 * 2**30},
        {"workload-class": ["cpu"]},
        "test",
    )
    plan = plan_capacity(
        run_,
        service="text-classifier",
        target_rps=500,
        slo_p99_ms=100,
        headroom=0.3,
        spec=spec,
    )
    # 40 rps/pod * 0.7 = 28 -> ceil(500 / 28) = 18 replicas; 3 pods of 1 CPU fit a 3920m node -> 6 nodes.
    assert (plan.replicas, plan.nodegroup, plan.pods_per_node, plan.nodes) == (
        18,
        "cpu-general",
        3,
        6,
    )
    assert plan.pods_per_node == pods_per_node(spec, cpu_group)
    # 5 CPU-seconds over 10 s = 0.5 cores at 40 rps; planned at 70% of that: 0.35 cores of a 1-core request.
    assert plan.hpa["cpu_target_utilization_percent"] == 35
    written = write_report(plan, run_, tmp_path)
    assert written["plot"].read_bytes().startswith(b"\x89PNG")
    assert "| replicas | **18**" in written["report"].read_text()


def test_plan_for_gpu_pods_lands_on_the_gpu_group() -> None:
    run_ = StepRun("http://127.0.0.1:1", 100, 0.99, "5s", [_step(50, 30), _step(100, 80)], "")
    spec = PodSpec(
        "image-classifier",
        {"cpu": 2.0, "memory": 6 * 2**30, "nvidia.com/gpu": 1.0},
        {},
        "test",
    )
    groups = load_nodegroups()
    plan = plan_capacity(
        run_,
        service="image-classifier",
        target_rps=300,
        slo_p99_ms=100,
        headroom=0.25,
        spec=spec,
        groups=groups,
    )
    gpu = next(g for g in groups if g.name == plan.nodegroup)
    assert isinstance(gpu, NodeGroup)
    assert gpu.gpus_per_node == 1
    assert (plan.replicas, plan.pods_per_node, plan.nodes) == (
        4,
        1,
        4,
    )  # 300 / (100 * 0.75) = 4
    assert plan.nodes_within_max


def test_step_rates() -> None:
    assert step_rates(5, 2, 40) == [5, 10, 20, 40]
    assert step_rates(10, 0, 30, increment=10) == [10, 20, 30]
    with pytest.raises(ValueError, match="factor > 1"):
        step_rates(5, 1, 40)


def test_pinning_keeps_service_and_client_apart() -> None:
    assert parse_cpu_list("0,2-4") == {0, 2, 3, 4}
    pinned = pinning_from("1:0")
    assert pinned == Pinning(service="1", client="0")
    assert pinned.service_prefix() == ["taskset", "-c", "1"]
    assert pinned.client_prefix() == ["taskset", "-c", "0"]
    assert pinned.service_cpus == 1
    assert pinning_from("none") == UNPINNED
    assert UNPINNED.service_prefix() == []
    assert not UNPINNED.pinned
    with pytest.raises(ValueError, match="must not share"):
        pinning_from("0-1:1")
    auto = pinning_from("auto")
    assert not auto.pinned or not parse_cpu_list(auto.service) & parse_cpu_list(auto.client)


def test_profile_categories_go_by_the_deepest_known_frame() -> None:
    handler = "predict (image_classifier/app.py:110)"
    assert categorize(["run (uvicorn/server.py:1)", handler, "validate_python (pydantic/type_adapter.py:1)"]) == (
        "validation (pydantic)"
    )
    assert categorize(["_loop (serving/batcher.py:1)", "forward (torch/nn/modules/conv.py:1)"]).startswith("model")
    assert categorize(["run (anyio/_backends/_asyncio.py:1)", "decode_image (image_classifier/model.py:87)"]) == (
        "preprocess: decode + resize"
    )
    assert categorize(["main (x.py:1)"]) == "other"


def test_gpu_wheel_list_matches_the_lock() -> None:
    """bench/gpu/wheels.txt is the exact list the GPU run installs: it must follow uv.lock."""
    pins = pinned_requirements()
    assert {"fastapi", "uvicorn", "pydantic-core", "starlette"} <= set(pins)
    assert "torch" not in pins
    assert "httpx" not in pins
    assert (REPO / "bench" / "gpu" / "wheels.txt").read_text() == requirements_text(pins), "run `invoke bench.wheels`"


def _wheel(folder: Path, name: str, tag: str) -> Path:
    path = folder / f"{name}-1.0-{tag}.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}/__init__.py", f"TAG = {tag!r}\n")
        archive.writestr(
            f"{name}-1.0.dist-info/METADATA",
            f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        )
    return path


def test_install_wheels_picks_the_matching_build(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "purepkg", "py3-none-any")
    _wheel(wheels, "binpkg", "cp39-cp39-manylinux2014_x86_64")
    py = f"cp{sys.version_info.major}{sys.version_info.minor}"
    _wheel(wheels, "binpkg", f"{py}-{py}-manylinux2014_x86_64")
    (tmp_path / "req.txt").write_text("purepkg==1.0\nbinpkg==1.0\n")
    target = tmp_path / "site"
    run(
        [
            sys.executable,
            "bench/gpu/install_wheels.py",
            str(wheels),
            str(target),
            "--requirements",
            str(tmp_path / "req.txt"),
        ],
        60,
    )
    check = run(
        [sys.executable, "-c", "import binpkg, purepkg; print(binpkg.TAG)"],
        60,
        env={**os.environ, "PYTHONPATH": str(target)},
    )
    assert check.stdout.strip() == f"{py}-{py}-manylinux2014_x86_64"
    (tmp_path / "req.txt").write_text("missingpkg==1.0\n")
    proc = subprocess.run(
        [
            sys.executable,
            "bench/gpu/install_wheels.py",
            str(wheels),
            str(tmp_path / "s2"),
            "--requirements",
            str(tmp_path / "req.txt"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "missingpkg" in proc.stderr


@pytest.mark.bench
def test_invoke_load_writes_report_hist_and_plot(tmp_path: Path) -> None:
    folder = tmp_path / "load"
    run(
        [
            *INVOKE,
            "load",
            "--rate",
            "20",
            "--duration",
            "2s",
            "--hist-buckets",
            "0,10ms,100ms,1s",
            "--results",
            str(folder),
        ],
        300,
    )
    report = json.loads((folder / "report.json").read_text())
    assert report["requests"] == 40
    assert set(report["status_codes"]) == {"200"}, report
    assert "Latencies" in (folder / "report.txt").read_text()
    hist = (folder / "hist.txt").read_text()
    rows = [re.match(r"\[(\S+),\s+(\S+)\]\s+(\d+)", line) for line in hist.splitlines()[1:]]
    assert [(m.group(1), m.group(2)) for m in rows if m] == [
        ("0s", "10ms"),
        ("10ms", "100ms"),
        ("100ms", "1s"),
        ("1s", "+Inf"),
    ]
    assert sum(int(m.group(3)) for m in rows if m) == 40
    assert "Bucket" in hist
    assert "<html" in (folder / "plot.html").read_text().lower()
    targets = [json.loads(line) for line in (folder / "targets.jsonl").read_text().splitlines()]
    assert all(t["url"].startswith("http://127.0.0.1:") for t in targets)


@pytest.mark.bench
def test_invoke_capacity_plans_from_a_step_run(tmp_path: Path) -> None:
    steps = tmp_path / "steps"
    run(
        [
            *INVOKE,
            "load",
            "--step",
            "--start-rate",
            "5",
            "--factor",
            "2",
            "--max-rate",
            "10",
            "--duration",
            "1s",
            "--slo-p99",
            "5000",
            "--results",
            str(steps),
        ],
        300,
    )
    saved = json.loads((steps / "steps.json").read_text())
    assert [s["rate"] for s in saved["steps"]] == [5, 10]
    assert all(s["service_cpu_seconds"] is not None for s in saved["steps"])
    out = tmp_path / "capacity"
    run(
        [
            *INVOKE,
            "capacity",
            "--steps",
            str(steps / "steps.json"),
            "--target-rps",
            "100",
            "--slo-p99",
            "5000",
            "--results",
            str(out),
        ],
        120,
    )
    plan = json.loads((out / "plan.json").read_text())
    assert plan["replicas"] >= 2
    assert plan["nodes"] >= 1
    assert plan["nodegroup"] == "gpu-t4"
    assert plan["hpa"]["rps_per_pod_target"] > 0
    assert (out / "latency-vs-rate.png").read_bytes().startswith(b"\x89PNG")
    assert "Capacity plan" in (out / "capacity.md").read_text()


@pytest.mark.bench
def test_invoke_bench_quick_writes_json_and_summary(tmp_path: Path) -> None:
    run(
        [*INVOKE, "bench", "--quick", "--device", "cpu", "--results", str(tmp_path)],
        600,
    )
    benchmarks = json.loads((tmp_path / "benchmarks.json").read_text())
    kinds = {b["extra_info"].get("kind") for b in benchmarks["benchmarks"]}
    assert kinds == {"model", "preprocess", "http"}
    assert benchmarks["machine_info"]["eks_inference"]["torch"]
    ratios = json.loads((tmp_path / "ratios.json").read_text())
    assert ratios
    assert {"serving_efficiency", "batching_gain", "overhead_ms"} <= set(ratios[0])
    assert "pinning" in ratios[0]
    summary = (tmp_path / "summary.md").read_text()
    assert "## Serving ratios" in summary
    assert "serving efficiency" in summary
    assert "torch" in summary
    assert "core pinning" in summary
    assert "## Targets" in summary


@pytest.mark.bench
def test_invoke_bench_peers_starts_each_peer_on_the_demo_bundle(tmp_path: Path) -> None:
    """`invoke bench.peers --quick`: ours, LitServe and KServe each start once on the demo bundle and answer."""
    missing = sorted(name for name, package in PEER_PACKAGES.items() if importlib.util.find_spec(package) is None)
    # The peers group is one of uv's default groups: a missing peer is a broken environment, not a reason to skip.
    assert not missing, f"peer packages not installed: {', '.join(missing)} (`uv sync --group peers`)"
    run([*INVOKE, "bench.peers", "--quick", "--results", str(tmp_path)], 600)
    peers = json.loads((tmp_path / "peers.json").read_text())
    assert {s["server"] for s in peers["servers"]} == {"ours", "ours-json", "litserve", "kserve"}
    for server in peers["servers"]:
        assert server["levels"], server["server"]
        assert all(level["ok"] == level["requests"] > 0 for level in server["levels"]), server
        assert server["rss_mib"] > 0
    assert set(peers["ratios"]) == {"litserve", "kserve"}
    assert (tmp_path / "peers.png").read_bytes().startswith(b"\x89PNG")
    summary = (tmp_path / "summary.md").read_text()
    assert "## Peer servers, side by side" in summary
    assert "ours >= every peer" in summary


@pytest.mark.bench
def test_gpu_run_script_on_cpu(tmp_path: Path) -> None:
    """bench/gpu/run.sh end to end with --device cpu --quick (the script a CUDA machine runs)."""
    run(
        ["bash", "bench/gpu/run.sh", str(tmp_path), "--device", "cpu", "--quick"],
        600,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert "torch" in (tmp_path / "machine.txt").read_text()
    assert json.loads((tmp_path / "benchmarks.json").read_text())["benchmarks"]
    assert list(tmp_path.glob("ratios-demo-cpu-fp32.json"))
    assert "## Serving ratios" in (tmp_path / "summary.md").read_text()
