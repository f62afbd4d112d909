"""Smoke tests for `invoke bench`, `bench.load`, `bench.capacity`, `bench.peers` and bench/gpu/run.sh: they run and
write parseable files. Timings are never asserted; each starts services and short attacks (`bench` marker).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import pytest

from ops.perf.peers import PEER_PACKAGES, SERVERS
from testkit import run_ok

INVOKE = [sys.executable, "-m", "invoke"]


@pytest.mark.bench
def test_invoke_load_writes_report_hist_and_plot(tmp_path: Path) -> None:
    folder = tmp_path / "load"
    run_ok(
        [
            *INVOKE,
            "bench.load",
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
    run_ok(
        [
            *INVOKE,
            "bench.load",
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
    run_ok(
        [
            *INVOKE,
            "bench.capacity",
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
    run_ok(
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
    # The CPU comparison's peers are in the peers group, one of uv's default groups: a missing one is a broken
    # environment, not a reason to skip. (PyTriton is a GPU-run peer only, from the GPU wheel set.)
    cpu_peers = {name: PEER_PACKAGES[name] for name in SERVERS if name in PEER_PACKAGES}
    assert set(cpu_peers) == {"litserve", "kserve"}
    missing = sorted(name for name, package in cpu_peers.items() if importlib.util.find_spec(package) is None)
    assert not missing, f"peer packages not installed: {', '.join(missing)} (`uv sync --group peers`)"
    run_ok([*INVOKE, "bench.peers", "--quick", "--results", str(tmp_path)], 600)
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
    run_ok(
        ["bash", "bench/gpu/run.sh", str(tmp_path), "--device", "cpu", "--quick"],
        600,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert "torch" in (tmp_path / "machine.txt").read_text()
    assert json.loads((tmp_path / "benchmarks.json").read_text())["benchmarks"]
    ratio = json.loads((tmp_path / "ratios-demo-cpu-fp32.json").read_text())
    assert ratio["body"]["name"] == "photo"
    assert ratio["runtime"]["http"] == "httptools"
    summary = (tmp_path / "summary.md").read_text()
    assert "## Serving ratios" in summary
    for name in ("peers.json", "peers-large.json"):
        peers = json.loads((tmp_path / name).read_text())
        assert peers["servers"][0]["server"] == "ours"
        assert all(level["ok"] == level["requests"] > 0 for level in peers["servers"][0]["levels"])
        assert (tmp_path / name.replace(".json", ".svg")).read_text().startswith("<svg")
    assert "## Peer servers, side by side: demo cpu fp32, photo 500x375" in summary
    assert "## Peer servers, side by side: demo cpu fp32, large 4000x3000" in summary
