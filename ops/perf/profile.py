"""One request, socket to socket: sequential lone requests timed by stage, with a py-spy profile of the service."""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ops import core
from ops.perf.defaults import MAX_WAIT_MS
from ops.perf.pinning import Pinning, parse_cpu_list, pinning_from

# Where a sampled stack's time goes: the deepest frame that matches decides (leaf first). Order matters only among
# patterns that match the same frame. Patterns are (function substring or "", file path substring).
CATEGORIES: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("logging", (("", "/logging/"), ("", "pythonjsonlogger"))),
    ("metrics (prometheus)", (("", "prometheus_client"),)),
    ("JSON encode/decode", (("", "/json/"), ("", "orjson"), ("dump_json", ""), ("serialize_json", ""))),
    ("model: predict + postprocess", (("", "torch/"), ("predict", "image_classifier/model.py"))),
    ("preprocess: decode + resize", (("", "PIL/"), ("", "image_classifier/model.py"), ("", "numpy"))),
    ("batcher (queue, wake-ups)", (("", "serving/batcher.py"),)),
    ("validation (pydantic)", (("", "pydantic"),)),
    ("FastAPI/Starlette routing + handler", (("", "fastapi/"), ("", "starlette/"), ("", "serving/app.py"))),
    ("thread hops (anyio, executors)", (("", "anyio/"), ("", "concurrent/futures"), ("", "threading.py"))),
    ("uvicorn HTTP parser + protocol", (("", "uvicorn/protocols"), ("", "httptools"), ("", "h11"))),
    ("event loop (asyncio/uvloop)", (("", "asyncio/"), ("", "uvloop"), ("", "selectors.py"))),
)
STAGES = ("read", "preprocess", "queue_wait", "inference", "postprocess", "total")


def categorize(stack: Sequence[str]) -> str:
    """The category of one sampled stack (frames root first, each `function (file:line)`)."""
    for frame in reversed(stack):
        function, _, where = frame.partition(" (")
        for name, patterns in CATEGORIES:
            if any(fn in function and path in where for fn, path in patterns):
                return name
    return "other"


def read_collapsed(path: Path) -> Iterator[tuple[str, list[str], int]]:
    """py-spy `--format raw` output: (thread, frames root first, samples) per line."""
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0] if frames and frames[0].startswith(("thread", "process")) else ""
        yield thread, [f for f in frames if not f.startswith(("thread", "process"))], int(count)


def cpu_ms_by_category(path: Path, rate_hz: int, requests: int) -> dict[str, float]:
    """Milliseconds per request in each category, from the samples of a py-spy run."""
    counts: Counter[str] = Counter()
    for _, frames, samples in read_collapsed(path):
        counts[categorize(frames)] += samples
    scale = 1000.0 / rate_hz / max(requests, 1)
    return {name: round(samples * scale, 3) for name, samples in counts.most_common()}


@dataclass
class LoneRun:
    """Sequential single requests against one service: the round trip and the stages the service reports."""

    label: str
    requests: int
    http_ms: list[float]
    stages_ms: dict[str, list[float]]
    notes: list[str] = field(default_factory=list)

    def p(self, values: Sequence[float], q: float) -> float:
        ordered = sorted(values)
        return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 3) if ordered else float("nan")

    def summary(self) -> dict[str, Any]:
        """p50/p99 of the round trip, p50 of each stage, and what lies outside the handler (uvicorn, sockets)."""
        stage_p50 = {k: round(statistics.median(v), 3) for k, v in self.stages_ms.items() if v}
        http_p50 = round(statistics.median(self.http_ms), 3)
        model = stage_p50.get("inference", 0.0) + stage_p50.get("postprocess", 0.0)
        return {
            "label": self.label,
            "requests": self.requests,
            "http_p50_ms": http_p50,
            "http_p99_ms": self.p(self.http_ms, 0.99),
            "stages_p50_ms": stage_p50,
            "outside_handler_ms": round(http_p50 - stage_p50.get("total", http_p50), 3),
            "overhead_ms": round(http_p50 - stage_p50.get("inference", 0.0), 3),
            "non_model_ms": round(http_p50 - model - stage_p50.get("preprocess", 0.0), 3),
        }


@contextmanager
def on_cpus(cpus: str) -> Iterator[None]:
    """Run the calling thread on `cpus` for the block (the client side of a pinned measurement)."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, parse_cpu_list(cpus))
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def lone_requests(url: str, body: bytes, requests: int, label: str, client_cpus: str = "", warmup: int = 5) -> LoneRun:
    """`requests` sequential raw-JPEG predictions on one keep-alive connection (after `warmup` untimed ones)."""
    http_ms: list[float] = []
    stages: dict[str, list[float]] = {k: [] for k in STAGES}
    with on_cpus(client_cpus), httpx.Client(timeout=30.0) as client:
        for index in range(requests + warmup):
            t0 = time.perf_counter()
            response = client.post(url + "/v1/predict", content=body, headers={"Content-Type": "image/jpeg"})
            elapsed = (time.perf_counter() - t0) * 1000
            response.raise_for_status()
            if index < warmup:
                continue
            http_ms.append(elapsed)
            timings = response.json().get("timings_ms") or {}
            for key in STAGES:
                if key in timings:
                    stages[key].append(float(timings[key]))
            time.sleep(0.002)  # a lone request: the service is idle when the next one arrives
    return LoneRun(label, requests, http_ms, stages)


@contextmanager
def py_spy(pid: int, output: Path, rate_hz: int, cpus: str = "") -> Iterator[None]:
    """Sample `pid` with py-spy while the block runs, on `cpus` (the client's, so the sampler takes nothing from the
    service); raw collapsed stacks to `output`. Only the thread holding the GIL is sampled (`--gil`): that is Python
    work, and C code that releases the GIL (torch kernels, uvloop waiting in epoll) is left out, so idle waiting
    never counts as work (without it py-spy cannot tell uvloop's epoll wait from running code)."""
    argv = [
        *(["taskset", "-c", cpus] if cpus else []),
        shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy",  # the venv's, from PyPI
        "record",
        "--pid",
        str(pid),
        "--rate",
        str(rate_hz),
        "--format",
        "raw",
        "--threads",
        "--gil",
        "--nonblocking",
        "--output",
        str(output),
    ]
    proc = core.start(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # attach before the first request
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def service_settings(batch_size: int, max_wait_ms: float = MAX_WAIT_MS) -> dict[str, str]:
    from ops.perf.benchmodels import bundle_for

    return {
        "MODEL_URI": str(bundle_for("demo")),
        "DEVICE": "cpu",
        "MAX_BATCH_SIZE": str(batch_size),
        "MAX_WAIT_MS": str(max_wait_ms),
        "LOG_LEVEL": "warning",
        "REQUEST_TIMEOUT_S": "30",
    }


def profile(
    folder: Path,
    pinning: Pinning,
    requests: int = 200,
    rate_hz: int = 1000,
    batch_sizes: Sequence[int] = (16, 1),
    echo: Callable[[str], None] = print,
    python: str = sys.executable,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Lone requests with batching on and off, each service profiled with py-spy; writes profile.json."""
    from ops.perf.bodies import sample_body
    from ops.perf.localservice import LocalService

    folder.mkdir(parents=True, exist_ok=True)
    body = sample_body()
    runs = []
    for batch in batch_sizes:
        label = f"batching-{'on' if batch > 1 else 'off'}"
        service = LocalService(
            "image_classifier",
            service_settings(batch),
            log_path=folder / f"service-{label}.log",
            prefix_argv=pinning.service_prefix(),
            python=python,
        )
        if extra_env:
            service.settings.update({k.removeprefix(service.prefix): v for k, v in extra_env.items()})
        with service:
            raw = folder / f"py-spy-{label}.txt"
            lone_requests(service.url, body, 0, label, pinning.client, warmup=10)  # first-use costs, not profiled
            with py_spy(service.proc.pid if service.proc else 0, raw, rate_hz, pinning.client):
                run = lone_requests(service.url, body, requests, label, pinning.client, warmup=0)
            summary = run.summary()
            summary["gil_ms_per_request"] = cpu_ms_by_category(raw, rate_hz, requests) if raw.exists() else {}
            runs.append(summary)
            echo(json.dumps(summary, indent=1))
    from ops.perf.benchmodels import machine_info

    result = {"pinning": pinning.to_dict(), "machine": machine_info(), "rate_hz": rate_hz, "runs": runs}
    (folder / "profile.json").write_text(json.dumps(result, indent=2))
    return result


def run_profile(folder: Path, *, requests: int = 200, pin: str = "auto", rate_hz: int = 1000) -> dict[str, Any] | None:
    """`invoke bench.profile`: `profile` into `folder`; under a dry run it only says so."""
    from ops import core

    if core.is_dry():
        core.console.print(f"would profile {requests} lone requests per service into {folder}")
        return None
    return profile(folder, pinning_from(pin), requests, rate_hz)
