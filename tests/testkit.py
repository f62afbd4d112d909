"""Test helpers: real service processes on free loopback ports, a loopback origin server, image encoding."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ops.perf.localservice import LocalService

REPO = Path(__file__).resolve().parent.parent


class Server(LocalService):
    """A real `python -m <service>` process on a free loopback port (ops.perf.localservice), plus test conveniences."""

    @property
    def process(self) -> subprocess.Popen[bytes]:
        assert self.proc is not None, "the server is not started"
        return self.proc

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def log(self) -> str:
        return self.log_tail(1_000_000)


def service_cpus() -> set[int] | None:
    """`CHAOS_SERVICE_CPUS` (e.g. "1"): the cores the services under test get, apart from the load generator's
    (`invoke chaos` pins itself to the others); unset: no pinning."""
    spec = os.environ.get("CHAOS_SERVICE_CPUS", "")
    return {int(cpu) for cpu in spec.split(",") if cpu.strip()} or None


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of a running process to `cpus`; threads it starts later inherit the mask of their creator."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task.name), cpus)


@contextmanager
def run_server(module: str, env: dict[str, str], tmp: Path) -> Iterator[Server]:
    """Start the service (JSON logs to a file under `tmp`), yield it ready, then SIGTERM it (kill after 30 s)."""
    server = Server(module, {"LOG_FORMAT": "json", **env}, log_path=tmp / f"{module}.log", ready_timeout_s=240)
    try:
        with server:
            cpus = service_cpus()
            if cpus:
                pin(server.process.pid, cpus)
            yield server
    except Exception:
        sys.stderr.write(server.log_tail(4000))
        raise


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample a service's /metrics exports, by (name, sorted labels); counters keep their `_total` name."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@dataclass(frozen=True)
class WorkCounts:
    """What a service counted between two scrapes: answers by status, refusals by reason, work begun by stage."""

    answers: dict[str, float]
    refused: dict[str, float]
    started: dict[str, float]

    @classmethod
    def between(cls, service: str, before: Samples, after: Samples) -> WorkCounts:
        def delta(name: str, label: str, **match: str) -> dict[str, float]:
            out: dict[str, float] = {}
            for (sample, labels), value in after.items():
                named = dict(labels)
                if sample == f"{service}_{name}" and all(named.get(k) == v for k, v in match.items()):
                    gained = value - before.get((sample, labels), 0.0)
                    if gained:
                        out[named[label]] = gained
            return out

        return cls(
            answers=delta("requests_total", "status", endpoint="/v1/predict"),
            refused=delta("rejected_total", "reason"),
            started=delta("stage_started_total", "stage"),
        )

    def stage(self, name: str) -> float:
        return self.started.get(name, 0.0)


# -- a loopback HTTP server for image URLs ------------------------------------------------------------------------
@dataclass
class Origin:
    """Serves `files` by path; `redirects` maps a path to a Location; everything on 127.0.0.1. While `gate` is clear,
    every answer waits for it (up to 60 s): a download the test holds open."""

    url: str
    files: dict[str, bytes] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)
    gate: threading.Event = field(default_factory=lambda: _open_gate())


def _open_gate() -> threading.Event:
    gate = threading.Event()
    gate.set()
    return gate


def encode(image: object, fmt: str = "JPEG", **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)  # type: ignore[attr-defined]
    return buffer.getvalue()


def run_ok(argv: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command from the repository root; fail the test with its output when it exits non-zero."""
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc
