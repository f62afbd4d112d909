"""Runs both services as local processes (no cluster), waits for readiness, and stops them cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from ops.models import DEFAULT_OUT, IMAGE_BUNDLE, TEXT_BUNDLE

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class LocalService:
    name: str
    module: str
    env_prefix: str
    port: int
    bundle: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


SERVICES = (
    LocalService("image-classifier", "image_classifier", "IMAGE_CLASSIFIER_", 8080, IMAGE_BUNDLE),
    LocalService("text-classifier", "text_classifier", "TEXT_CLASSIFIER_", 8081, TEXT_BUNDLE),
)


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 180.0) -> float:
    """Poll /readyz until 200; returns the seconds it took. Fails fast if the process dies."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {process.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} was not ready within {timeout_s:.0f}s")


def service_env(service: LocalService, overrides: Mapping[str, str], models: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault(f"{service.env_prefix}MODEL_URI", str(models / service.bundle))
    env.setdefault(f"{service.env_prefix}LOG_FORMAT", "text")
    env[f"{service.env_prefix}HOST"] = "127.0.0.1"
    env[f"{service.env_prefix}PORT"] = str(service.port)
    env.update({f"{service.env_prefix}{k}": v for k, v in overrides.items()})
    return env


@contextmanager
def running(
    services: tuple[LocalService, ...] = SERVICES,
    overrides: Mapping[str, str] | None = None,
    models: Path = DEFAULT_OUT,
) -> Iterator[dict[str, tuple[LocalService, float]]]:
    """Start the services, yield {name: (service, seconds to ready)}, then SIGTERM them and wait for exit."""
    processes: list[tuple[LocalService, subprocess.Popen[bytes]]] = []
    try:
        for service in services:
            env = service_env(service, overrides or {}, models)
            processes.append((service, subprocess.Popen([sys.executable, "-m", service.module], env=env, cwd=REPO)))
        yield {s.name: (s, wait_ready(s.url, p)) for s, p in processes}
    finally:
        for _, process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
