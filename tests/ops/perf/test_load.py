"""The load test's pure parts: step rates, the vegeta targets file, the step run's verdict and its JSON."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from ops import core
from ops.perf import load
from ops.perf.closedloop import Call


def test_step_rates() -> None:
    assert load.step_rates(5, 2, 40) == [5, 10, 20, 40]
    assert load.step_rates(10, 0, 30, increment=10) == [10, 20, 30]
    with pytest.raises(ValueError, match="factor > 1"):
        load.step_rates(5, 1, 40)


def test_targets_file_holds_one_line_per_call(tmp_path: Path) -> None:
    calls = [
        Call.json("/v1/predict", {"image_url": "http://127.0.0.1:9/a.jpg"}),
        Call("/v1/predict", "image/jpeg", b"x"),
    ]
    path = load.write_targets(tmp_path / "targets.jsonl", "http://127.0.0.1:8080/", calls)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [t["url"] for t in lines] == ["http://127.0.0.1:8080/v1/predict"] * 2
    assert [t["header"]["Content-Type"] for t in lines] == [["application/json"], ["image/jpeg"]]
    assert base64.b64decode(lines[1]["body"]) == b"x"
    assert json.loads(base64.b64decode(lines[0]["body"])) == {"image_url": "http://127.0.0.1:9/a.jpg"}


def test_a_dry_load_run_starts_nothing(tmp_path: Path) -> None:
    with core.dry_run():
        assert load.run_load(load.LoadOptions(step=True), tmp_path / "run") is None
    assert not (tmp_path / "run").exists()


def _result(rate: float, p99: float, success: float = 1.0) -> load.LoadResult:
    latency = dict.fromkeys(("min", "mean", "p50", "p90", "p95", "max"), 1.0) | {"p99": p99}
    return load.LoadResult(rate, "1s", int(rate), rate, success, latency, {"200": int(rate)}, [], "")


def test_step_run_round_trips_and_judges_the_slo(tmp_path: Path) -> None:
    run = load.StepRun("http://127.0.0.1:1", 100, 0.99, "1s", [_result(5, 50), _result(10, 90), _result(20, 300)], "")
    assert run.sustainable() == run.steps[1]
    for stamp in ("20261129T000000Z", "20261130T000000Z"):
        (tmp_path / stamp).mkdir()
        saved = json.loads(run.save(tmp_path / stamp / "steps.json").read_text())
    assert saved["sustainable_rate"] == 10
    assert load.StepRun.load(tmp_path / stamp / "steps.json") == run
    assert load.find_latest(tmp_path, "steps.json") == tmp_path / "20261130T000000Z" / "steps.json"
