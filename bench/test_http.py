"""End-to-end HTTP latency of one /v1/predict request to a local image service, dynamic batching on and off."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ops.perf.benchmodels import bundle_for
from ops.perf.bodies import sample_body
from ops.perf.localservice import LocalService

BATCHING = {"batching-on": 16, "batching-off": 1}


@pytest.fixture(scope="module", params=list(BATCHING), ids=list(BATCHING))
def service(
    request: pytest.FixtureRequest,
    device: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, LocalService]]:
    """The demo image service on a free loopback port; started once per (device, batching) and stopped after."""
    log = Path(tmp_path_factory.mktemp("service")) / "service.log"
    settings = {
        "MODEL_URI": str(bundle_for("demo")),
        "DEVICE": device,
        "MAX_BATCH_SIZE": str(BATCHING[request.param]),
        "LOG_LEVEL": "warning",
    }
    with LocalService("image_classifier", settings, log_path=log) as running:
        yield request.param, running


@pytest.mark.parametrize("payload", ["raw-jpeg", "image-b64"])
def test_predict_http(benchmark: Any, service: tuple[str, LocalService], device: str, payload: str) -> None:
    """One request at a time (batch 1 by construction): the latency a lone client sees."""
    import base64

    mode, running = service
    body = sample_body()
    if payload == "raw-jpeg":
        kwargs: dict[str, Any] = {
            "content": body,
            "headers": {"Content-Type": "image/jpeg"},
        }
    else:
        kwargs = {"json": {"image_b64": base64.b64encode(body).decode()}}
    with httpx.Client(base_url=running.url, timeout=30.0) as client:
        for _ in range(5):  # keep-alive connection and first-request costs outside the timed calls
            client.post("/v1/predict", **kwargs).raise_for_status()

        def call() -> httpx.Response:
            return client.post("/v1/predict", **kwargs)

        benchmark.group = f"http {device}"
        benchmark.extra_info.update(kind="http", device=device, batching=mode, payload=payload, model="demo")
        response = benchmark(call)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"]
