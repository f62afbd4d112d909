"""The chaos run's plan (pinning, settings) and its report, from figures as the tests write them."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from ops.perf import chaos

REPO = Path(__file__).resolve().parents[2]


def test_the_load_generator_and_the_services_get_disjoint_cores() -> None:
    run = chaos.ChaosRun(scale=2, out=Path("/tmp/x"))
    assert run.cores({0, 1, 2, 3}) == ([0, 1], [2, 3])
    assert run.cores({5}) is None  # one core: nothing to split, nothing pinned
    cores = run.cores()
    if cores is not None:  # this machine's own split is what the command and the settings use
        generator, services = cores
        assert not set(generator) & set(services)
        assert run.pytest_argv()[:3] == ["taskset", "-c", ",".join(map(str, generator))]
        assert run.env()["CHAOS_SERVICE_CPUS"] == ",".join(map(str, services))
    assert run.env()["CHAOS_SCALE"] == "2"
    unpinned = chaos.ChaosRun(scale=2, out=Path("/tmp/x"), pin=False)
    assert unpinned.cores({0, 1}) is None
    assert unpinned.pytest_argv()[0] == sys.executable
    assert "CHAOS_SERVICE_CPUS" not in unpinned.env()


def test_the_report_counts_5xx_and_states_every_overload_attempt(tmp_path: Path) -> None:
    figures = tmp_path / "figures"
    figures.mkdir()
    fuzz = {"statuses": {"400": 900, "413": 90, "503": 7, "500": 3}, "cases": 1000}
    rss = {"rss_before_kib": 800 * 1024, "rss_after_kib": 810 * 1024, "rss_growth_kib": 10 * 1024}
    (figures / "fuzz_image.json").write_text(json.dumps({**fuzz, **rss}))
    attempt = {"saturation_per_s": 70.5, "statuses_at_2x": {"200": 300, "503": 280}, "slowest_s": 1.2}
    (figures / "overload_raw.json").write_text(
        json.dumps(
            {
                "attempts": [
                    {**attempt, "refusal_p50_s": 0.2, "refusal_p99_s": 0.9, "refusal_target_p99_s": 0.05},
                    {**attempt, "refusal_p50_s": 0.002, "refusal_p99_s": 0.0125, "refusal_target_p99_s": 0.05},
                ]
            }
        )
    )
    run = chaos.ChaosRun(scale=1, out=tmp_path, pin=False)
    report = chaos.write_report(run, "passed", datetime(2026, 11, 30, 12, 0, tzinfo=UTC)).read_text()
    assert "**5xx: 10**" in report  # 503 and 500 from the fuzz are both server errors
    assert "RSS 800 MiB after warm-up, 810 MiB after (growth 10 MiB)" in report
    assert "attempt 1" in report
    assert "**p99 900.0 ms** (target 50 ms: **missed**)" in report
    assert "**p99 12.5 ms** (target 50 ms: met)" in report
    assert "text: no figures" in report
    assert "pinning: none" in report


def test_timings_ci_does_not_assert_are_stated_against_their_targets(tmp_path: Path) -> None:
    figures = tmp_path / "figures"
    figures.mkdir()
    for name, seconds in (("fast_thing", 0.004), ("slow_thing", 3.2)):
        what = name.replace("_", " ")
        (figures / f"timing_{name}.json").write_text(json.dumps({"seconds": seconds, "target_s": 1.0, "what": what}))
    report = chaos.render_report(
        chaos.read_figures(figures), chaos.ChaosRun(scale=1, out=tmp_path, pin=False), "passed", datetime.now(UTC)
    )
    assert "| fast thing (`fast_thing`) | 4.0 ms | 1000.0 ms | met |" in report
    assert "| slow thing (`slow_thing`) | 3200.0 ms | 1000.0 ms | **missed** |" in report


def test_a_dry_chaos_run_starts_nothing_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "chaos"
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "--dry", "services.chaos", "--scale", "3", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    shown = " ".join((done.stdout + done.stderr).split())  # the console wraps long lines
    assert "would run env CHAOS_SCALE=3" in shown
    assert "-m pytest" in shown
    assert not out.exists()


def test_the_report_states_the_connection_figures(tmp_path: Path) -> None:
    figures = tmp_path / "figures"
    figures.mkdir()
    loris = {"connections": 500, "header_timeout_s": 1.0, "answers": {"408": 500}, "held_after_deadline": 0}
    (figures / "slowloris.json").write_text(json.dumps({**loris, "normal_client": [200, 200, 200]}))
    storm = {"fetches": 200, "statuses": {"503 overloaded": 168, "504 upstream_timeout": 32}}
    (figures / "slow_upstream_storm.json").write_text(
        json.dumps({**storm, "refusal_p50_s": 0.05, "refusal_p99_s": 0.12})
    )
    run = chaos.ChaosRun(scale=1, out=tmp_path, pin=False)
    report = chaos.write_report(run, "passed", datetime(2026, 12, 3, 12, 0, tzinfo=UTC)).read_text()
    assert "## Connections and image hosts" in report
    assert "**held open: 0**" in report
    assert "503 overloaded: 168, 504 upstream_timeout: 32" in report
    assert "**p99 120.0 ms**" in report
    assert "tests/services/test_connection_limits.py" in chaos.TESTS
