"""The benchmark summary: machine, ratio table with met/missed targets, and run folders under results/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ops.perf import report


def _ratio(pinned: bool = True) -> dict[str, Any]:
    level = {"concurrency": 1, "throughput": 90.0, "p50_ms": 10.0, "p99_ms": 20.0, "ok": 9, "requests": 9}
    return {
        "config": {"model": "demo", "device": "cpu", "precision": "fp32", "batch_size": 16, "level_duration_s": 3.0},
        "machine": {"cpu": "test cpu", "cpu_count": 2, "torch": "2.x", "python": "3.11", "load_average_1m": 0.5},
        "model_only_images_per_s": 100.0,
        "batching_on": [{**level, "client": "vegeta"}],
        "batching_off": [level],
        "serving_efficiency": 0.9,
        "batching_gain": 1.5,
        "p99_bound_ms": 20.0,
        "http_p50_ms_batch1": 10.0,
        "inference_p50_ms_batch1": 9.5,
        "overhead_ms": 0.5,
        "targets": {"serving_efficiency": 0.95, "overhead_ms": 1.0},
        "pinning": {"pinned": pinned, "service": "1", "client": "0"},
        "lone_p50_ms": {"on": 10.0, "off": 9.0},
        "lone_p50_gap_ms": 1.0,
    }


def test_ratio_rows_judge_floors_and_ceilings() -> None:
    (row,) = report.ratio_rows([_ratio()])
    columns = dict(zip(report.RATIO_COLUMNS, row, strict=True))
    assert columns["eff. target"] == ">= 0.95 (missed)"
    assert columns["overhead target"] == "<= 1 (met)"
    assert columns["CPUs"] == "svc 1 / client 0"


def test_summary_states_the_machine_ratios_and_targets(tmp_path: Path) -> None:
    path = report.write_summary(tmp_path, [_ratio()], commands=["invoke bench"], title="T")
    text = path.read_text()
    assert text.startswith("# T")
    assert "| CPU | test cpu x 2 |" in text
    assert "## Serving ratios" in text
    assert "- demo/cpu: CPU serving efficiency, pinned = 0.9, target >= 0.95 (missed)" in text
    assert (tmp_path / "ratios.json").is_file()
    assert report.load_ratios(tmp_path) == []  # ratios-*.json are the measuring run's; ratios.json is the summary's


def test_run_folders_sit_under_results() -> None:
    run = report.new_run_dir("load", "peers")
    assert run.parent == report.results_dir("load") == report.RESULTS_ROOT / "load"
    assert run.name.endswith("Z-peers")
