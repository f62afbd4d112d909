"""Runs a service under uvicorn with a graceful drain: SIGTERM flips readiness, finishes accepted work, exits 0."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

import uvicorn
from fastapi import FastAPI

from serving.logconfig import configure_logging, logging_config
from serving.protocol import ConnectionLimits, limited_protocol
from serving.settings import ServingSettings

if TYPE_CHECKING:
    from serving.model import Model

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first SIGTERM/SIGINT starts a drain instead of an immediate shutdown.

    While draining, the listener stays open: /readyz answers 503 (so the endpoint is removed), new predictions get
    503 `draining`, and accepted requests run to completion. When none is left, or after `drain_timeout_s`, the
    normal uvicorn shutdown runs. A second signal skips the wait for the drain, but still lets uvicorn's graceful
    shutdown finish requests in flight (so nothing is cancelled mid-request, and nothing is logged as an error);
    a third one exits at once.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_timeout_s: float) -> None:
        super().__init__(config)
        self._app = app
        self._drain_timeout_s = drain_timeout_s
        self._drain_started: float | None = None
        self._drain_announced = False
        self._signals = 0

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        runtime = getattr(self._app.state, "runtime", None)
        self._signals += 1
        if self._drain_started is not None or runtime is None or sig not in (signal.SIGTERM, signal.SIGINT):
            # A later signal, or nothing to drain yet: uvicorn's graceful shutdown now, and at once on the third.
            if self._drain_started is not None and self._signals == 2:
                log.info("second signal: not waiting for the drain any more; finishing requests in flight")
            self.should_exit = True
            if self._signals >= 3:
                self.force_exit = True
            return
        self._drain_started = time.monotonic()
        # Plain attributes only: this handler runs between two bytecodes of whatever the main thread was doing, which
        # may hold prometheus_client's lock (one plain Lock for every value in multiprocess mode: a front creating a
        # labelled child) or a logging lock; taking one again here hung a split front forever. Readiness and
        # admission read `draining` at once; on_tick logs the drain and exports readiness 0 from the loop.
        runtime.draining = True

    async def on_tick(self, counter: int) -> bool:
        runtime = getattr(self._app.state, "runtime", None)
        if runtime is not None and runtime.load_error is not None:
            return True  # nothing to serve: shut down, and serve() exits non-zero so the pod restarts and says why
        if self._drain_started is not None:
            runtime = self._app.state.runtime
            if not self._drain_announced:
                self._drain_announced = True
                runtime.announce_drain()
            waited = time.monotonic() - self._drain_started
            if runtime.drained:
                log.info("drained after %.2fs: shutting down", waited)
                return True
            if waited >= self._drain_timeout_s:
                log.warning("drain timeout (%.0fs) with %d requests in flight: shutting down", waited, runtime.inflight)
                return True
        return await super().on_tick(counter)


def inherited_listener(fd: int) -> socket.socket:
    """A split front's listening socket, inherited from the supervisor, with its family, type and protocol read from
    the descriptor. uvicorn's own `fd=` takes every descriptor for a Unix socket: the event loop then sees no TCP
    connection and sets no TCP_NODELAY, so a response written in two sends waits for the client's delayed ACK
    (40 ms on Linux) before its second one leaves: every lone request of the split took 40 ms longer."""
    return socket.socket(fileno=fd)


def serve(app: FastAPI, settings: ServingSettings, fd: int | None = None, **uvicorn_kwargs: Any) -> None:
    """Run `app` until SIGTERM, then drain and exit 0; on the listening socket `fd` when given (a split front)."""
    from serving.app import OPEN_CONNECTIONS_KEY

    configure_logging(settings.log_level, settings.log_format)
    # The event loop thread gives the GIL up at every socket call and may then wait for a thread running Python code
    # (preprocessing, the batch worker) for up to the switch interval (5 ms by default) to get it back. Refusals
    # and probes are only event-loop work, so a shorter interval keeps them quick while the CPUs are busy.
    sys.setswitchinterval(settings.gil_switch_interval_s)

    def count_refusal(reason: str) -> None:
        runtime = getattr(app.state, "runtime", None)
        if runtime is not None:
            runtime.metrics.rejected.labels(reason).inc()

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=logging_config(settings.log_level, settings.log_format),
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
        # Header deadline, header limits and the connection cap (serving.protocol); uvicorn's keep-alive timeout
        # (5 s) still closes a connection idle that long, and the header deadline bounds one that trickles bytes.
        http=limited_protocol(ConnectionLimits.of(settings), count_refusal),
        **uvicorn_kwargs,
    )
    server = DrainingServer(config, app, settings.drain_timeout_s)
    setattr(app.state, OPEN_CONNECTIONS_KEY, lambda: len(server.server_state.connections))
    server.run(sockets=None if fd is None else [inherited_listener(fd)])
    runtime = getattr(app.state, "runtime", None)
    if runtime is not None and runtime.load_error is not None:
        raise SystemExit(f"the model failed to load: {runtime.load_error}")


def serve_with_reload(factory: str, settings: ServingSettings, reload_dirs: list[str]) -> None:
    """Development mode (local overlay / Tilt live update): uvicorn reloads the worker when code changes. The
    connection limits of serving.protocol are not applied here: the reloader starts its worker from an import string,
    and a development loop on a laptop needs none of them."""
    configure_logging(settings.log_level, settings.log_format)
    uvicorn.run(
        factory,
        factory=True,
        host=settings.host,
        port=settings.port,
        reload=True,
        reload_dirs=reload_dirs,
        log_config=logging_config(settings.log_level, settings.log_format),
    )


def usage(settings: ServingSettings, prog: str) -> str:
    """`--help`: the service is configured by environment variables only; list them with their current values."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    lines = [f"usage: python -m {prog}", "", f"Serves until SIGTERM. Settings come from {prefix}* variables:", ""]
    for name, spec in type(settings).model_fields.items():
        about = f" - {spec.description}" if spec.description else ""
        lines.append(f"  {prefix}{name.upper()}={getattr(settings, name)!s}{about}")
    return "\n".join(lines) + "\n"


SettingsT = TypeVar("SettingsT", bound=ServingSettings)


def load_object(reference: str) -> Any:
    """`package.module:name` -> the object (imported only when needed: the supervisor never imports torch)."""
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


def main(settings: SettingsT, factory: str, argv: list[str] | None = None, model: str | None = None) -> None:
    """What `python -m <service>` runs: reload mode for development, the split's supervisor (SPLIT=true; `model`
    names the engine's model class, `package.module:Class`), else the draining server. `--engine N` and
    `--front FD N` are the split's processes, started by serving.supervisor."""
    args = sys.argv[1:] if argv is None else argv
    prog = factory.split(".")[0]
    if args[:1] == ["--engine"] and model is not None and len(args) == 2:
        from serving.engine import run_engine

        model_class: Callable[[SettingsT], Model[Any, Any, Any]] = load_object(model)
        run_engine(settings, lambda: model_class(settings), prog, int(args[1]))
        # Drained (or stopped while loading, the load's daemon thread maybe still inside torch): nothing is left to
        # finalize, the metrics live in shared files and the log is flushed here. The interpreter's teardown of
        # torch and its extensions (nanobind reports objects leaked by triton at every exit) is skipped, so the
        # engine's exit status is its drain's, never its teardown's.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    if args[:1] == ["--front"] and len(args) == 3:
        from serving.ipc import front_share

        share = front_share(settings, int(args[2]))
        serve(load_object(factory)(share), share, fd=int(args[1]))
        return
    if args:
        known = {"-h", "--help"}
        sys.stdout.write(usage(settings, prog))
        raise SystemExit(0 if set(args) <= known else 2)
    if settings.reload:
        serve_with_reload(factory, settings, [str(Path(__file__).resolve().parent.parent)])
    elif settings.split:
        if model is None:
            raise SystemExit(f"{prog} does not support the engine/front split (SPLIT=true)")
        from serving.supervisor import supervise

        supervise(settings, prog, prog)
    else:
        serve(load_object(factory)(settings), settings)
