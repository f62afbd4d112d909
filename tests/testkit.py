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
