"""The drain's signal handler touches no lock: it runs between two bytecodes of whatever the main thread was doing.

A split front hung forever when SIGTERM arrived while it was creating a labelled metric child: the handler set the
readiness gauge, whose lock (prometheus_client's, one for every value in multiprocess mode) the interrupted code
held. Here the test holds the readiness gauge's lock, as that code did, and the handler must still return.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import uvicorn
from fastapi import FastAPI

from serving.app import Runtime
from serving.metrics import ServiceMetrics
from serving.server import DrainingServer
from serving.settings import ServingSettings


def test_sigterm_starts_the_drain_without_taking_a_metric_lock() -> None:
    app = FastAPI()
    runtime: Runtime[Any, Any] = Runtime(
        service="drain_test",
        settings=ServingSettings(model_uri="unused"),
        model=None,  # type: ignore[arg-type]  # the drain never reaches the model
        metrics=ServiceMetrics("drain_test"),
    )
    runtime.ready = True
    runtime.metrics.ready.set(1)
    app.state.runtime = runtime
    server = DrainingServer(uvicorn.Config(app), app, drain_timeout_s=5)
    lock = runtime.metrics.ready._value._lock  # the value's lock, held as the interrupted code held it
    with lock:
        handler = threading.Thread(target=server.handle_exit, args=(signal.SIGTERM, None), daemon=True)
        handler.start()
        handler.join(5)
        assert not handler.is_alive(), "the SIGTERM handler waited for a metric lock (a front would hang forever)"
    assert runtime.draining  # readiness and admission see it at once
    assert runtime.metrics.ready._value.get() == 1  # exported from the event loop's next tick, not the handler
