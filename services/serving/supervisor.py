"""PID 1 of the split: starts the engine and the front processes, restarts a front that dies, ends with the engine.

    supervisor ── engine (owns CUDA, the model, the batcher)          python -m <service> --engine N
              └─ N fronts (HTTP on one inherited listening socket)   python -m <service> --front FD N

The children run in sessions of their own, so signals reach them only from here. The listening socket is opened
here and inherited by every front, so a connection waiting to be accepted is not lost with the front that would
have taken it. The fronts run with CUDA_VISIBLE_DEVICES="" so no front can ever initialize CUDA. SIGTERM drains: the
fronts get it first (readiness 503, new predictions refused, accepted ones finished through the engine); once they
have exited the engine gets it, serves what is queued and exits; the supervisor exits 0. If the engine dies, the
fronts are stopped and the supervisor exits non-zero, so the kubelet restarts the pod. If a front dies, the others
go on and a new one takes its place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from types import FrameType

from prometheus_client import multiprocess

from serving.ipc import METRICS_DIR, run_dir
from serving.logconfig import configure_logging
from serving.settings import ServingSettings

log = logging.getLogger(__name__)

POLL_S = 0.05


class Supervisor:
    def __init__(self, settings: ServingSettings, prog: str, service: str) -> None:
        self.settings, self.prog, self.service = settings, prog, service
        self.fronts = settings.resolved_fronts()
        self.directory = run_dir(settings, service)
        self.signals = 0
        self.engine: subprocess.Popen[bytes] | None = None
        self.front_procs: list[subprocess.Popen[bytes]] = []

    def _env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self.directory / METRICS_DIR), **extra}

    def _start_front(self, listener: socket.socket) -> subprocess.Popen[bytes]:
        fd = listener.fileno()
        argv = [sys.executable, "-m", self.prog, "--front", str(fd), str(self.fronts)]
        proc = subprocess.Popen(argv, pass_fds=(fd,), env=self._env(CUDA_VISIBLE_DEVICES=""), start_new_session=True)
        log.info("front started (pid %d)", proc.pid)
        return proc

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self.signals += 1
        log.info("supervisor: %s (%d): passing it to the fronts", signal.Signals(sig).name, self.signals)
        for proc in self.front_procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM if self.signals < 3 else signal.SIGKILL)

    def run(self) -> int:
        shutil.rmtree(self.directory, ignore_errors=True)  # a previous container's files (the emptyDir outlives it)
        (self.directory / METRICS_DIR).mkdir(parents=True, mode=0o700)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        argv = [sys.executable, "-m", self.prog, "--engine", str(self.fronts)]
        # Sessions of their own: only the supervisor orders them (a terminal's Ctrl-C or a group signal reaches it
        # alone, and it drains in order); each exits by itself should the supervisor vanish (serving.engine, .app).
        self.engine = subprocess.Popen(argv, env=self._env(), start_new_session=True)
        log.info("engine started (pid %d); %d fronts on %s:%d", self.engine.pid, self.fronts, *self._address())
        listener = socket.create_server(self._address(), backlog=4096)
        listener.set_inheritable(True)
        self.front_procs = [self._start_front(listener) for _ in range(self.fronts)]
        try:
            return self._watch(listener)
        finally:
            listener.close()
            for proc in [*self.front_procs, self.engine]:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            shutil.rmtree(self.directory, ignore_errors=True)

    def _address(self) -> tuple[str, int]:
        return self.settings.host, self.settings.port

    def _watch(self, listener: socket.socket) -> int:
        assert self.engine is not None
        while True:
            time.sleep(POLL_S)
            code = self.engine.poll()
            if code is not None:
                if self.signals and code == 0:  # stopped by the drain (or while loading): a clean exit
                    self._stop_fronts()
                    return 0
                log.error("the engine exited (%d): stopping the fronts; the pod restarts", code)
                self._stop_fronts()
                return code or 1
            for proc in list(self.front_procs):
                front_code = proc.poll()
                if front_code is None:
                    continue
                self.front_procs.remove(proc)
                multiprocess.mark_process_dead(proc.pid, str(self.directory / METRICS_DIR))
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / f"front-{proc.pid}.slots").unlink()
                if self.signals:
                    log.info("front %d exited (%d) while draining", proc.pid, front_code)
                else:
                    log.error("front %d exited (%d): starting another", proc.pid, front_code)
                    self.front_procs.append(self._start_front(listener))
            if self.signals and not self.front_procs:
                return self._stop_engine()

    def _stop_fronts(self) -> None:
        for proc in self.front_procs:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        deadline = time.monotonic() + 5
        for proc in self.front_procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))

    def _stop_engine(self) -> int:
        assert self.engine is not None
        log.info("fronts drained: stopping the engine")
        self.engine.terminate()
        try:
            code = self.engine.wait(self.settings.drain_timeout_s + 10)
        except subprocess.TimeoutExpired:
            log.error("the engine did not exit: killing it")
            self.engine.kill()
            return 1
        log.info("engine exited (%d): supervisor exits", code)
        return code


def supervise(settings: ServingSettings, prog: str, service: str) -> None:
    configure_logging(settings.log_level, settings.log_format)
    raise SystemExit(Supervisor(settings, prog, service).run())
