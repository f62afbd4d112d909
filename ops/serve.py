"""Runs both services as local processes on their default ports (no cluster), and stops them cleanly."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from ops.localservice import LocalService
from ops.models import DEFAULT_OUT, IMAGE_BUNDLE, TEXT_BUNDLE


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    package: str
    port: int
    bundle: str


SERVICES = (
    ServiceSpec("image-classifier", "image_classifier", 8080, IMAGE_BUNDLE),
    ServiceSpec("text-classifier", "text_classifier", 8081, TEXT_BUNDLE),
)


@contextmanager
def running(
    services: tuple[ServiceSpec, ...] = SERVICES, models: Path = DEFAULT_OUT
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
