"""Closed-loop load with vegeta: N clients, each sending its next request when the last returns, on pinned CPUs."""

from __future__ import annotations

import base64
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ops import core


@dataclass(frozen=True)
class Call:
    """One HTTP request to a server under test: path, content type, body (and method). The benchmarks send it
    with vegeta, the reliability tests with tests/loadkit.py's client."""

    path: str
    content_type: str
    body: bytes
    method: str = "POST"
    headers: tuple[tuple[str, str], ...] = ()  # beside Content-Type (the v2 binary extension's header length)

    @classmethod
    def json(cls, path: str, document: object) -> Call:
        return cls(path, "application/json", json.dumps(document).encode())

    def vegeta_json(self, base_url: str) -> str:
        """The call as one line of a vegeta JSON targets file, against `base_url`."""
        return json.dumps(
            {
                "method": self.method,
                "url": base_url.rstrip("/") + self.path,
                "body": base64.b64encode(self.body).decode(),
                "header": {"Content-Type": [self.content_type], **{k: [v] for k, v in self.headers}},
            }
        )


@dataclass
class Level:
    """One closed-loop level: `concurrency` clients, each sending the next request when the last one returns."""

    concurrency: int
    duration_s: float
    requests: int
    ok: int
    throughput: float  # successful requests (= images) per second
    p50_ms: float
    p99_ms: float
    client: str


@dataclass
class Responses:
    """Per-response facts of a level, decoded from vegeta's results (only when asked for: they cost a decode)."""

    latency_ms: list[float] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)

    def median_timing(self, keys: tuple[str, ...]) -> float | None:
        """p50 of the first of `keys` present in the responses' `timings_ms` (None when no response has one)."""
        values = []
        for body in self.bodies:
            timings = body.get("timings_ms") or {}
            key = next((k for k in keys if k in timings), None)
            if key is not None:
                values.append(float(timings[key]))
        return statistics.median(values) if values else None


def admission_for(concurrency: Sequence[int]) -> dict[str, str]:
    """The service's admission settings for a closed-loop run up to max(concurrency) clients: every client's request
    admitted (twice the clients in flight, a queue four times as deep), so the levels measure serving, not the
    production admission limit (64 in flight), which would answer the clients beyond it with fast 503s. Never below
    the service's own defaults."""
    from serving.settings import ServingSettings  # type: ignore[import-untyped, unused-ignore]

    defaults, clients = ServingSettings.model_fields, max(concurrency)
    return {
        "MAX_INFLIGHT": str(max(defaults["max_inflight"].default, 2 * clients)),
        "QUEUE_CAPACITY": str(max(defaults["queue_capacity"].default, 4 * clients)),
    }


def attack(
    vegeta: Path,
    base_url: str,
    call: Call,
    concurrency: int,
    duration_s: float,
    folder: Path,
    prefix: list[str] | None = None,
    keep_bodies: bool = False,
) -> tuple[Level, Responses]:
    """`concurrency` closed-loop clients for `duration_s`, vegeta run under `prefix` (e.g. `taskset -c 0`)."""
    folder.mkdir(parents=True, exist_ok=True)
    targets = folder / "targets.jsonl"
    targets.write_text(call.vegeta_json(base_url) + "\n")
    results = folder / f"c{concurrency}.bin"
    # -rate=0: no pacing, each of exactly `concurrency` workers sends its next request when the previous returns.
    core.run(
        [
            *(prefix or []),
            str(vegeta),
            "attack",
            "-format=json",
            f"-targets={targets}",
            "-rate=0",
            f"-workers={concurrency}",
            f"-max-workers={concurrency}",
            f"-duration={duration_s}s",
            "-timeout=30s",
            f"-output={results}",
        ],
        capture=False,
    )
    report = VegetaReport.of(json.loads(core.run([str(vegeta), "report", "-type=json", str(results)]).stdout))
    level = Level(
        concurrency=concurrency,
        duration_s=duration_s,
        requests=report.requests,
        ok=round(report.requests * report.success),
        throughput=round(report.throughput, 2),
        p50_ms=report.latency_ms["p50"],
        p99_ms=report.latency_ms["p99"],
        client="vegeta",
    )
    responses = Responses()
    if keep_bodies:
        encoded = core.run([str(vegeta), "encode", "-to=json", str(results)]).stdout
        for line in encoded.splitlines():
            result = json.loads(line)
            if result.get("code") != 200:
                continue
            responses.latency_ms.append(result["latency"] / 1e6)
            try:
                responses.bodies.append(json.loads(base64.b64decode(result.get("body") or "")))
            except ValueError:
                responses.bodies.append({})
    return level, responses


@dataclass(frozen=True)
class VegetaReport:
    """`vegeta report -type=json`, read once for every caller (latencies in ms, rounded to the microsecond)."""

    requests: int
    success: float
    throughput: float
    latency_ms: dict[str, float]  # min, mean, p50, p90, p95, p99, max
    status_codes: dict[str, int]
    errors: list[str]

    # vegeta's latency keys -> ours.
    LATENCIES: ClassVar[dict[str, str]] = {
        "min": "min",
        "mean": "mean",
        "50th": "p50",
        "90th": "p90",
        "95th": "p95",
        "99th": "p99",
        "max": "max",
    }

    @classmethod
    def of(cls, report: dict[str, Any]) -> VegetaReport:
        latencies = report["latencies"]
        return cls(
            requests=int(report["requests"]),
            success=float(report["success"]),
            throughput=float(report["throughput"]),
            latency_ms={ours: round(latencies[theirs] / 1e6, 3) for theirs, ours in cls.LATENCIES.items()},
            status_codes={str(k): int(v) for k, v in (report.get("status_codes") or {}).items()},
            errors=[str(e) for e in report.get("errors") or []],
        )


def knee(levels: list[Level], fraction: float = 0.95) -> Level:
    """The lowest-concurrency level within `fraction` of the best throughput (saturation without extra queueing)."""
    best = max(level.throughput for level in levels)
    return next(level for level in levels if level.throughput >= fraction * best)


def throughput_within(levels: list[Level], p99_bound_ms: float) -> float:
    """Best throughput among levels whose p99 stays within the bound (0 when none does)."""
    return max(
        (level.throughput for level in levels if level.p99_ms <= p99_bound_ms and level.ok > 0),
        default=0.0,
    )
