"""Test helpers: real service processes on free loopback ports, loopback origin servers (also failing ones), images."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import struct
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
    (`invoke services.chaos` pins itself to the others); unset: no pinning."""
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


# -- image hosts that fail -------------------------------------------------------------------------------------------
UNRESOLVABLE_HOST = "x" * 64 + ".invalid"  # a 64-character label: getaddrinfo refuses it locally, no DNS query is sent
# How the fetcher must answer each way an allowed image host can fail: (status, error code = fetch outcome).
UPSTREAM_FAILURES: dict[str, tuple[int, str]] = {
    "unresolvable": (502, "upstream_unavailable"),
    "refused": (502, "upstream_unavailable"),
    "reset": (502, "upstream_unavailable"),
    "http_503": (502, "upstream_unavailable"),
    "connect_timeout": (504, "upstream_timeout"),
    "read_timeout": (504, "upstream_timeout"),
    "trickle": (504, "upstream_timeout"),
}


class FailingUpstreams:
    """Loopback image hosts that fail in every way `UPSTREAM_FAILURES` names; `urls[kind]` reaches each, and
    `allow_list` is the FETCH_ALLOWED_HOSTS value that permits them all. Use with `with`; threads are daemons.

    connect_timeout is a listener that never accepts, its one-connection backlog filled, so the kernel drops further
    SYNs; read_timeout accepts and never answers; trickle sends one byte of its body every 0.2 s; reset accepts and
    resets the connection; refused is a port nothing listens on."""

    def __init__(self) -> None:
        self._sockets: list[socket.socket] = []
        self._stop = threading.Event()
        self.urls: dict[str, str] = {}

    def __enter__(self) -> FailingUpstreams:
        self.urls["unresolvable"] = f"http://{UNRESOLVABLE_HOST}/x.jpg"
        from ops.perf.localservice import free_port

        self.urls["refused"] = f"http://127.0.0.1:{free_port()}/x.jpg"
        for kind in ("reset", "http_503", "read_timeout", "trickle"):
            listener = self._listen(backlog=64)
            threading.Thread(target=self._serve, args=(listener, kind), daemon=True).start()
            self.urls[kind] = f"http://127.0.0.1:{listener.getsockname()[1]}/x.jpg"
        blackhole = self._listen(backlog=0)
        for _ in range(3):  # fill the accept queue: later SYNs are dropped and connects time out
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(blackhole.getsockname())
            self._sockets.append(filler)
        self.urls["connect_timeout"] = f"http://127.0.0.1:{blackhole.getsockname()[1]}/x.jpg"
        return self

    @property
    def allow_list(self) -> str:
        return ",".join(url.split("/")[2] for url in self.urls.values())

    def _listen(self, backlog: int) -> socket.socket:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(backlog)
        self._sockets.append(listener)
        return listener

    def _serve(self, listener: socket.socket, kind: str) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn, kind), daemon=True).start()

    def _answer(self, conn: socket.socket, kind: str) -> None:
        with contextlib.suppress(OSError), conn:
            conn.recv(65536)
            if kind == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif kind == "http_503":
                conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            elif kind == "read_timeout":
                self._stop.wait(60)
            elif kind == "trickle":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
                for _ in range(1000):
                    if self._stop.wait(0.2):
                        return
                    conn.sendall(b"t")

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for sock in self._sockets:
            sock.close()
