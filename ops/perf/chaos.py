"""The chaos run: the long versions of the hostile-input and overload tests, and one report of what they measured.

The tests themselves (tests/services/) are the only code that attacks the services; CI runs them short and asserts
only behaviour. `CHAOS_SCALE` lengthens them and `CHAOS_REPORT_DIR` makes each write its figures as JSON, which
`write_report` turns into report.md: the timings CI does not assert (a slower machine would miss any latency bound
that holds on this one) are stated here against their targets, as met or missed.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ops import core
from ops.core import REPO_ROOT

_SUITES = ("fuzz_services", "reliability", "schemathesis", "overload_and_shutdown", "batcher", "fetch_liveness")
# Connection limits and image-host failures: their figures are the report's "Connections" section.
CONNECTION_TESTS = ("tests/services/test_connection_limits.py",)
TESTS = (
    *(f"tests/services/test_{name}.py" for name in _SUITES),
    "tests/services/test_readiness.py::test_sigterm_while_loading_exits_at_once_and_cleanly",
    *CONNECTION_TESTS,
)
RESULTS_ROOT = REPO_ROOT / "bench" / "results"


@dataclass(frozen=True)
class ChaosRun:
    """One chaos run: how long its tests run (`scale`) and where the figures and the report go."""

    scale: float
    out: Path

    pin: bool = True

    def cores(self, available: set[int] | None = None) -> tuple[list[int], list[int]] | None:
        """(load generator's cores, services' cores): disjoint halves of `available` (default: the cores this process
        may use); None when pinning is off or there is a single core."""
        allowed = sorted(os.sched_getaffinity(0) if available is None else available)
        if not self.pin or len(allowed) < 2:
            return None
        half = len(allowed) // 2
        return allowed[:half], allowed[half:]

    def pytest_argv(self) -> list[str]:
        argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", *TESTS]
        cores = self.cores()
        return ["taskset", "-c", ",".join(map(str, cores[0])), *argv] if cores else argv

    def env(self) -> dict[str, str]:
        env = {"CHAOS_SCALE": f"{self.scale:g}", "CHAOS_REPORT_DIR": str(self.out / "figures")}
        cores = self.cores()
        if cores:
            # The services get the other cores, and as many torch threads as they have cores.
            env["CHAOS_SERVICE_CPUS"] = ",".join(map(str, cores[1]))
            for prefix in ("IMAGE_CLASSIFIER", "TEXT_CLASSIFIER"):
                env[f"{prefix}_TORCH_THREADS"] = str(len(cores[1]))
        return env

    def pinning(self) -> str:
        cores = self.cores()
        if cores is None:
            return "none: load generator, origin and services share the cores (latencies are an upper bound)"
        return (
            f"load generator and image origin on cores {cores[0]}, the services on cores {cores[1]} "
            f"({len(cores[1])} torch threads)"
        )


def default_out(now: datetime | None = None) -> Path:
    """bench/results/chaos-<cores>core-<UTC date>/, beside the benchmark results."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d")
    return RESULTS_ROOT / f"chaos-{os.cpu_count()}core-{stamp}"


def read_figures(folder: Path) -> dict[str, Any]:
    """Every figures file the tests wrote, by name (fuzz_image, overload_raw, ...)."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}


def _counts(statuses: Mapping[str, int]) -> str:
    return ", ".join(f"{status}: {count}" for status, count in sorted(statuses.items())) or "none"


def _fuzz(figures: dict[str, Any]) -> list[str]:
    lines = ["## Hostile input (seeded fuzz, both services)", ""]
    for service in ("image", "text"):
        fuzz = figures.get(f"fuzz_{service}")
        if fuzz is None:
            lines.append(f"- {service}: no figures (the test did not get that far)")
            continue
        fives = sum(n for status, n in fuzz["statuses"].items() if status.startswith("5"))
        lines.append(
            f"- **{service}**: {fuzz['cases']:,} requests; by status {_counts(fuzz['statuses'])}; **5xx: {fives}**; "
            f"RSS {fuzz['rss_before_kib'] // 1024} MiB after warm-up, {fuzz['rss_after_kib'] // 1024} MiB after "
            f"(growth {fuzz['rss_growth_kib'] // 1024} MiB)"
        )
    schema = figures.get("schemathesis")
    if schema is not None:
        lines.append(
            f"- **schemathesis** (up to {schema['examples_per_operation']} examples per operation, positive and "
            f"negative): {_counts(schema['cases'])}"
        )
    return [*lines, ""]


def _generator_lag(attempt: dict[str, Any]) -> str:
    lag = attempt.get("generator_worst_lag_s")
    return "" if lag is None else f"; the load generator's own worst lateness {lag * 1000:.1f} ms"


def _met(seconds: float | None, target_s: float | None) -> str:
    if seconds is None or target_s is None:
        return ""
    return f" (target {target_s * 1000:g} ms: {'met' if seconds <= target_s else '**missed**'})"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _overload(figures: dict[str, Any]) -> list[str]:
    lines = ["## Overload at twice the measured saturation", ""]
    for path in ("raw", "image_url"):
        run = figures.get(f"overload_{path}")
        if run is None:
            lines.append(f"- {path}: no figures")
            continue
        for number, attempt in enumerate(run["attempts"], 1):
            p99 = attempt["refusal_p99_s"]
            work = attempt.get("work_started")
            lines.append(
                f"- **{path}** attempt {number}: saturation {attempt['saturation_per_s']}/s; at 2x "
                f"{_counts(attempt['statuses_at_2x'])}; 503 p50 {_ms(attempt['refusal_p50_s'])}, "
                f"**p99 {_ms(p99)}**{_met(p99, attempt.get('refusal_target_p99_s'))}; slowest answer "
                f"{attempt['slowest_s']} s"
                + _generator_lag(attempt)
                + ("" if work is None else f"; work begun by stage (the service's counters): {_counts(work)}")
            )
    recovery = figures.get("url_recovery")
    if recovery is not None:
        lines += [
            "",
            f"- **Recovery** of the image_url path right after an overload ({_counts(recovery['overload'])}): the "
            f"next request got {recovery['after']} in **{recovery['recovery_s']} s**",
        ]
    return [*lines, ""]


def _shutdown(figures: dict[str, Any]) -> list[str]:
    lines = ["## SIGTERM in the middle of an overload, and a slow upstream", ""]
    sigterm = figures.get("sigterm_mid_overload")
    if sigterm is not None:
        lines.append(
            f"- at {sigterm['rate_per_s']}/s: written before SIGTERM {_counts(sigterm['before_sigterm'])}; after "
            f"{_counts(sigterm['after_sigterm'])} ({sigterm['draining_503']} of the 503s `draining`; status 0 = "
            f"{_counts(sigterm.get('after_sigterm_unanswered', {}))}); **accepted and lost: "
            f"{sigterm['accepted_lost']}**; exit code {sigterm['exit_code']}"
        )
    slow = figures.get("slow_upstream")
    if slow is not None:
        lines.append(f"- a trickling upstream: statuses {slow['statuses']} after {slow['seconds']} s (deadline 2 s)")
    return [*lines, ""]


def _timings(figures: dict[str, Any]) -> list[str]:
    timings = {name.removeprefix("timing_"): t for name, t in figures.items() if name.startswith("timing_")}
    if not timings:
        return []
    lines = [
        "## Timings the tests measure and CI does not assert",
        "",
        "| what | measured | target | |",
        "|---|---|---|---|",
    ]
    for name, t in sorted(timings.items()):
        verdict = "met" if t["seconds"] <= t["target_s"] else "**missed**"
        lines.append(f"| {t['what']} (`{name}`) | {_ms(t['seconds'])} | {_ms(t['target_s'])} | {verdict} |")
    return [*lines, ""]


def _connections(figures: dict[str, Any]) -> list[str]:
    """Slowloris, oversized heads, the connection cap and the slow-upstream storm (tests/services/test_connection_
    limits.py), and the fuzz against failing image hosts."""
    lines = ["## Connections and image hosts", ""]
    loris = figures.get("slowloris")
    if loris is not None:
        lines.append(
            f"- **slowloris**: {loris['connections']} connections sent a partial request; after the "
            f"{loris['header_timeout_s']:g} s header deadline: answers {_counts(loris['answers'])}, **held open: "
            f"{loris['held_after_deadline']}**; a normal client meanwhile got {loris['normal_client']}"
        )
    heads = figures.get("header_limits")
    if heads is not None:
        lines.append("- **header limits**: " + "; ".join(f"{name} -> {status}" for name, status in heads.items()))
    cap = figures.get("connection_cap")
    if cap is not None:
        lines.append(
            f"- **connection cap** {cap['max_connections']} (+{cap['probe_margin']} for probes): past it "
            f"{cap['past_the_cap']}, probes {cap['probes_past_the_cap']}, past the margin {cap['past_the_margin']} at "
            f"once; recovered: {cap['recovered']}"
        )
    storm = figures.get("slow_upstream_storm")
    if storm is not None:
        p50, p99 = storm["refusal_p50_s"], storm["refusal_p99_s"]
        times = "" if p50 is None else f"; 503 p50 {p50 * 1000:.1f} ms, **p99 {p99 * 1000:.1f} ms**"
        lines.append(
            f"- **slow-upstream storm**: {storm['fetches']} concurrent fetches of a trickling allowed host: "
            f"{_counts(storm['statuses'])}{times}"
        )
    upstreams = figures.get("fuzz_upstreams")
    if upstreams is not None:
        lines.append(f"- **failing image hosts** ({upstreams['cases']} seeded cases): {_counts(upstreams['outcomes'])}")
    if len(lines) == 2:
        lines.append("- no figures")
    return [*lines, ""]


def render_report(figures: dict[str, Any], run: ChaosRun, outcome: str, started: datetime) -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    head = [
        f"# Chaos run {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"- `invoke services.chaos --scale {run.scale:g}`: pytest {outcome}",
        f"- machine: {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}; load average "
        f"(1/5/15 min) at the end: {load}",
        f"- pinning: {run.pinning()}",
        "",
    ]
    return "\n".join(
        head + _fuzz(figures) + _overload(figures) + _shutdown(figures) + _connections(figures) + _timings(figures)
    )


def run_chaos(run: ChaosRun) -> tuple[bool, Path | None]:
    """Run the tests (their output streams to the terminal), then write the report; (tests passed, report path).
    Under `invoke --dry` only the command is shown, and nothing is written."""
    started = datetime.now(UTC)
    env = run.env()
    # The settings are part of the shown command, so a dry run states all of them.
    argv = ["env", *(f"{key}={value}" for key, value in env.items()), *run.pytest_argv()]
    done = core.run(argv, cwd=REPO_ROOT, capture=False, ok_codes=range(256), echo=True)
    if core.is_dry():
        return True, None
    (run.out / "figures").mkdir(parents=True, exist_ok=True)
    passed = done.returncode == 0
    return passed, write_report(run, "passed" if passed else f"FAILED (exit {done.returncode})", started)


def write_report(run: ChaosRun, outcome: str, started: datetime) -> Path:
    report = run.out / "report.md"
    report.write_text(render_report(read_figures(run.out / "figures"), run, outcome, started))
    return report
