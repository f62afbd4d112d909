"""The engine process of the split: owns the device, the model and the one batcher; serves the fronts' slots.

No HTTP and no per-request Python beyond reading a 20-byte frame and queueing its slot: the fronts admit, read,
fetch and decode. One thread per front reads its frames; the batch worker (serving.batcher) runs the model on the
items in place in shared memory and answers each slot from the worker thread. A front that goes away takes only
its own items with it: they are skipped before compute, and the other fronts' items are served as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from serving.app import freeze_the_loaded_heap, load_and_warm_up, make_batch_runner
from serving.batcher import BatchTimings, MicroBatcher
from serving.ipc import ENGINE_SOCKET, FAILED, OK, REPLY, REQUEST, SlotFile, encode_error, recv_exactly, recv_hello
from serving.ipc import send_hello as send_hello_to
from serving.logconfig import configure_logging
from serving.metrics import ServiceMetrics
from serving.model import Model
from serving.settings import ServingSettings

log = logging.getLogger(__name__)

Payload = tuple["FrontConnection", int, int, int]  # the front, its slot, the item's kind, the item's bytes


class FrontConnection:
    """One front's socket and slots, as the engine sees them."""

    def __init__(self, sock: socket.socket, slots: SlotFile, pid: int) -> None:
        self.sock, self.slots, self.pid = sock, slots, pid
        self.closed = False
        self._send_lock = threading.Lock()

    def reply(self, slot: int, status: int, timings: BatchTimings, payload: bytes | memoryview, into: str) -> None:
        """Write the payload into the slot (`output`, or `input` for an error's JSON), then send the reply frame."""
        region = self.slots.output(slot) if into == "output" else self.slots.input(slot)
        size = min(len(payload) if isinstance(payload, bytes) else payload.nbytes, region.nbytes)
        region[:size] = payload[:size]
        frame = REPLY.pack(
            slot, status, timings.batch_size, timings.queue_wait_s, timings.inference_s, timings.postprocess_s, size
        )
        with self._send_lock, contextlib.suppress(OSError):  # a front that died: nobody reads its answers
            self.sock.sendall(frame)


class Engine:
    """Accepts the fronts on a Unix socket in the run directory, once the model is warm (the fronts' readiness)."""

    def __init__(
        self, model: Model[Any, Any, Any], settings: ServingSettings, metrics: ServiceMetrics, fronts: int
    ) -> None:
        self.model, self.settings, self.metrics, self.fronts = model, settings, metrics, fronts
        self.connections: list[FrontConnection] = []
        self._lock = threading.Lock()
        run_batch = make_batch_runner(model)

        def run(payloads: Sequence[Payload]) -> tuple[list[Any], float, float]:
            items = [model.unpack_item(kind, conn.slots.input(slot, n)) for conn, slot, kind, n in payloads]
            return run_batch(items)

        self.batcher: MicroBatcher[Payload, Any] = MicroBatcher(
            run,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            capacity=settings.queue_capacity * fronts + fronts,  # the fronts' slots bound what can arrive
            metrics=metrics,
            retry_after_s=settings.retry_after_s,
        )
        self.batcher.external_reserved = self._reserved_in_fronts

    def _reserved_in_fronts(self) -> int:
        with self._lock:
            return sum(c.slots.reserved for c in self.connections if not c.closed)

    def serve(self, directory: Path, stop: threading.Event) -> None:
        path = directory / ENGINE_SOCKET
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen(64)
        listener.settimeout(0.2)
        self.batcher.start()
        log.info("engine ready: serving %d fronts on %s", self.fronts, path)
        parent = os.getppid()
        try:
            while not stop.is_set() and os.getppid() == parent:  # the supervisor gone: exit, nobody can reach us
                try:
                    sock, _ = listener.accept()
                except TimeoutError:
                    continue
                threading.Thread(target=self._serve_front, args=(sock,), name="front-reader", daemon=True).start()
            # Serve the fronts still connected until they go (they drain first), within the drain timeout.
            deadline = time.monotonic() + self.settings.drain_timeout_s
            while self.connections and time.monotonic() < deadline and os.getppid() == parent:
                time.sleep(0.05)
        finally:
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            self.batcher.stop(timeout=self.settings.drain_timeout_s)  # serves what is queued, then returns

    def _serve_front(self, sock: socket.socket) -> None:
        try:
            sock.settimeout(None)
            send_hello_to(sock, {"model": self.model.front_info(), "fronts": self.fronts})
            hello = recv_hello(sock)
            conn = FrontConnection(sock, SlotFile.attach(hello["slots"]), int(hello["pid"]))
        except (OSError, ValueError, KeyError) as exc:
            log.warning("a front failed its hello: %r", exc)
            sock.close()
            return
        with self._lock:
            self.connections.append(conn)
        log.info("front %d connected (%d slots)", conn.pid, conn.slots.count)
        try:
            while True:
                frame = recv_exactly(sock, REQUEST.size)
                slot, nbytes, kind, deadline = REQUEST.unpack(frame)
                self._queue(conn, slot, nbytes, kind, deadline)
        except (ConnectionError, OSError):
            pass
        finally:
            conn.closed = True  # its queued items are skipped before compute
            with self._lock:
                self.connections.remove(conn)
            sock.close()
            log.info("front %d disconnected", conn.pid)

    def _queue(self, conn: FrontConnection, slot: int, nbytes: int, kind: int, deadline: float) -> None:
        def settle(result: Any, exc: BaseException | None) -> None:
            if exc is None:
                output, timings = result
                conn.reply(slot, OK, timings, self.model.pack_output(output), into="output")
            else:
                conn.reply(slot, FAILED, BatchTimings(), encode_error(exc), into="input")

        try:
            self.batcher.enqueue((conn, slot, kind, nbytes), deadline, settle, lambda: conn.closed)
        except Exception as exc:  # QueueFull: more than the fronts' slots (a misconfiguration), answered at once
            settle(None, exc)


def _load(model: Model[Any, Any, Any], max_batch_size: int, outcome: list[Any]) -> None:
    try:
        outcome.append(load_and_warm_up(model, max_batch_size))
    except BaseException as exc:  # handed to the main thread, which exits saying why
        outcome.append(exc)


def run_engine(
    settings: ServingSettings, model_factory: Callable[[], Model[Any, Any, Any]], service: str, fronts: int
) -> None:
    """`python -m <service> --engine N`, started by serving.supervisor: load, warm up, serve until SIGTERM."""
    from serving.ipc import run_dir

    configure_logging(settings.log_level, settings.log_format)
    sys.setswitchinterval(settings.gil_switch_interval_s)
    threads = settings.resolved_torch_threads()
    torch.set_num_threads(threads)
    stop = threading.Event()

    def on_signal(sig: int, frame: FrameType | None) -> None:
        log.info("engine: %s, serving what is queued, then exiting", signal.Signals(sig).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the supervisor orders the exit
    metrics = ServiceMetrics(service)
    model = model_factory()
    start = time.perf_counter()
    outcome: list[tuple[float, float] | BaseException] = []
    loading = threading.Thread(target=_load, args=(model, settings.max_batch_size, outcome), daemon=True)
    loading.start()
    while loading.is_alive() and not stop.is_set():  # a SIGTERM while loading exits at once (the thread is a daemon)
        loading.join(0.1)
    if stop.is_set() and not outcome:
        log.info("engine: stopped while loading")
        return
    if isinstance(outcome[0], BaseException):
        exc = outcome[0]
        log.error("the model failed to load: the engine exits", exc_info=exc)
        raise SystemExit(f"the model failed to load: {type(exc).__name__}: {exc}")
    loaded, warm = outcome[0]
    for note in model.notes:
        log.warning(note)
    engine = Engine(model, settings, metrics, fronts)
    freeze_the_loaded_heap()
    metrics.model_info.labels(model.name, model.version, str(model.device), model.precision).set(1)
    metrics.ready.set(1)
    log.info(
        "engine: model %s %s on %s (%s), torch threads %d, load %.2fs, warm-up of batch sizes 1..%d %.2fs (%.2fs)",
        model.name,
        model.version,
        model.device,
        model.precision,
        threads,
        loaded,
        settings.max_batch_size,
        warm,
        time.perf_counter() - start,
    )
    engine.serve(run_dir(settings, service), stop)
    log.info("engine: exiting (pid %d)", os.getpid())
