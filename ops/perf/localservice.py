"""Run a service (`python -m image_classifier`) as a subprocess on a free 127.0.0.1 port, for benchmarks and load."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import httpx

from ops import core
from ops.core import REPO_ROOT


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that `with LocalService(...)` blocks stop their servers (and the process
    groups of peer servers) when a runner is stopped from outside, e.g. by bench/gpu/run.sh's stage timeout."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceStartError(RuntimeError):
    """The service exited or never became ready; carries the tail of its log."""


class LocalService:
    """A service process bound to 127.0.0.1, ready (GET /readyz == 200) inside the `with` block.

    `settings` are the service's own settings without prefix (e.g. {"MAX_BATCH_SIZE": "1"});
    they become `<PREFIX>_<KEY>` environment variables. The log goes to `log_path`. `prefix_argv` goes in front of
    the command (e.g. `taskset -c 1` to pin it to a CPU); `command` replaces `python -m <package>` (a peer server,
    ready when `ready_path` answers 200).
    """

    def __init__(
        self,
        package: str = "image_classifier",
        settings: Mapping[str, str] | None = None,
        *,
        log_path: Path | None = None,
        ready_timeout_s: float = 180.0,
        python: str = sys.executable,
        port: int | None = None,
        inherit_output: bool = False,
        prefix_argv: list[str] | None = None,
        command: list[str] | None = None,
        ready_path: str = "/readyz",
    ) -> None:
        self.package = package
        self.prefix = package.upper() + "_"
        self.port = port or free_port()
        self.settings = {
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "LOG_FORMAT": "text",
        }
        self.settings.update(settings or {})
        self.log_path = log_path
        self.ready_timeout_s = ready_timeout_s
        self.python = python
        self.inherit_output = inherit_output  # log to our terminal (invoke serve) instead of a file or nowhere
        self.prefix_argv = list(prefix_argv or [])
        self.command = command
        self.ready_path = ready_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: object | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:41234."""
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The child's environment: ours, plus the prefixed settings and the source folders on PYTHONPATH."""
        env = dict(os.environ)
        for key, value in self.settings.items():
            env[self.prefix + key] = value
        paths = [str(REPO_ROOT / "services"), str(REPO_ROOT)]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        return env

    def start(self) -> Self:
        """Start the process and wait until /readyz answers 200."""
        log: IO[bytes] | int | None = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        if self.inherit_output:
            log = None
        self._log_file = log
        self.proc = core.start(
            [*self.prefix_argv, *(self.command or [self.python, "-m", self.package])],
            cwd=REPO_ROOT,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            # A custom command (a peer server) may fork workers that outlive its main process: give it a process
            # group of its own, so that stop() ends all of them.
            start_new_session=self.command is not None,
        )
        deadline = time.monotonic() + self.ready_timeout_s
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise ServiceStartError(f"{self.package} exited with {self.proc.returncode}: {self.log_tail()}")
                try:
                    if client.get(self.url + self.ready_path).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        self.stop()
        raise ServiceStartError(f"{self.package} not ready after {self.ready_timeout_s}s: {self.log_tail()}")

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (the service drains), then SIGKILL after `timeout_s`; returns the exit code."""
        code: int | None = None
        group = self.command is not None
        if self.proc is not None and self.proc.poll() is None:
            self._signal(signal.SIGTERM, group)
            try:
                code = self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL, group)
                code = self.proc.wait(10)
        elif self.proc is not None:
            code = self.proc.returncode
        if group and self.proc is not None:
            self._signal(signal.SIGKILL, group)  # whatever of the group is left (workers whose parent is gone)
        log = self._log_file
        if log is not None and hasattr(log, "close"):
            log.close()
        self._log_file = None
        return code

    def _signal(self, sig: int, group: bool) -> None:
        if self.proc is None:
            return
        try:
            if group:
                os.killpg(self.proc.pid, sig)  # the group's id is the leader's pid (start_new_session)
            else:
                self.proc.send_signal(sig)
        except ProcessLookupError:
            pass

    def log_tail(self, chars: int = 3000) -> str:
        """The last characters of the service log (empty when not logging to a file)."""
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def cpu_seconds(self) -> float:
        """User+system CPU seconds used so far by the service process (from /proc; 0.0 where unavailable)."""
        if self.proc is None:
            return 0.0
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        ticks = os.sysconf("SC_CLK_TCK")
        # Fields after "(comm) state": utime is the 12th, stime the 13th (0-based 11, 12).
        return (int(fields[11]) + int(fields[12])) / ticks

    def rss_bytes(self) -> int:
        """Resident memory of the process and all its descendants (peer servers fork workers), from /proc."""
        if self.proc is None:
            return 0
        return sum(_rss(pid) for pid in _tree(self.proc.pid))

    def mapped_files(self) -> set[str]:
        """Paths of the files mapped into the process and its descendants (/proc/PID/maps: shared objects)."""
        if self.proc is None:
            return set()
        return {path for pid in _tree(self.proc.pid) for path in _maps(pid)}

    def http_runtime(self) -> dict[str, str]:
        """The HTTP parser and event loop the running service uses, read from the shared objects its processes have
        mapped (nothing asked of the service): httptools' parser and uvloop's loop are C extensions, h11 and
        asyncio's pure-Python loop are what uvicorn falls back to without them. `unknown` where /proc is not
        readable."""
        files = self.mapped_files()
        if not files:
            return {"http": "unknown", "loop": "unknown", "evidence": "no /proc/PID/maps"}
        found = sorted({Path(f).name for f in files if _RUNTIME_MARKERS.search(f)})
        return {
            "http": "httptools" if any("/httptools/" in f for f in files) else "h11",
            "loop": "uvloop" if any("/uvloop/" in f for f in files) else "asyncio",
            "evidence": ", ".join(found) or "neither httptools nor uvloop is mapped",
        }

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc/<pid>/task/*/children."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo.extend(int(child) for child in task.read_text().split())
            except OSError:
                continue
    return found


# The C extensions whose presence in a process's maps tells which HTTP parser and event loop it runs.
_RUNTIME_MARKERS = re.compile(r"/(?:httptools|uvloop)/(?:.*/)?[^/]*\.so$")


def _maps(pid: int) -> set[str]:
    """File paths in /proc/<pid>/maps (empty when the process is gone or not ours to read)."""
    try:
        lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    except OSError:
        return set()
    return {fields[5] for fields in (line.split(maxsplit=5) for line in lines) if len(fields) == 6}


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
