"""Runs both services as local processes on their default ports (no cluster), and stops them cleanly."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from ops.core import SERVICES as REGISTRY
from ops.core import Service
from ops.models import DEFAULT_OUT
from ops.perf.localservice import LocalService

# Both services, in registry order (image, text).
SERVICES: tuple[Service, ...] = tuple(REGISTRY.values())


@contextmanager
def running(
    services: tuple[Service, ...] = SERVICES, models: Path = DEFAULT_OUT
) -> Iterator[dict[str, tuple[LocalService, float]]]:
    """Start the services, yield {name: (service, seconds to ready)}; on exit they get SIGTERM and drain."""
    with ExitStack() as stack:
        ready: dict[str, tuple[LocalService, float]] = {}
        for spec in services:
            start = time.monotonic()
            service = LocalService(
                spec.package, {"MODEL_URI": str(models / spec.bundle)}, port=spec.port, inherit_output=True
            )
            ready[spec.name] = (stack.enter_context(service), time.monotonic() - start)
        yield ready


SMOKE_TEXT = "DM me on WhatsApp at 555-0100"


def smoke_inputs() -> dict[str, tuple[str, bytes, str]]:
    """One demo input per service: (description, body, content type)."""
    import io
    import json

    from image_classifier.demo import render_sample

    buffer = io.BytesIO()
    render_sample("triangle", seed=7, size=128).save(buffer, format="JPEG", quality=95)
    return {
        "image-classifier": ("demo triangle (JPEG)", buffer.getvalue(), "image/jpeg"),
        "text-classifier": (repr(SMOKE_TEXT), json.dumps({"text": SMOKE_TEXT}).encode(), "application/json"),
    }


def smoke(urls: dict[str, str], timeout_s: float = 30.0) -> list[tuple[str, str, str, float]]:
    """POST each service's demo input to <url>/v1/predict; returns (service, input, top label, score) rows."""
    import httpx

    rows = []
    inputs = smoke_inputs()
    for name, url in urls.items():
        what, body, content_type = inputs[name]
        headers = {"content-type": content_type}
        resp = httpx.post(f"{url.rstrip('/')}/v1/predict", content=body, headers=headers, timeout=timeout_s)
        resp.raise_for_status()
        top = resp.json()["predictions"][0]
        rows.append((name, what, str(top["label"]), float(top["score"])))
    return rows
