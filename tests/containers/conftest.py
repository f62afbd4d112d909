"""Container-test fixtures: build the bases and service images once per session, run containers on host networking."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

# testcontainers would first pull its Ryuk reaper image, and no registry is reachable; fixtures clean up instead.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

from testcontainers.core.container import DockerContainer

from ops import core
from ops.images import build as image_build
from ops.images import docker as image_docker

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 180.0
BUILD_TIMEOUT_S = 3600
# The debootstrapped OS base works everywhere (Debian mirror only); set EKS_INFERENCE_IMAGES_OFFLINE=0 on a machine
# that can pull debian:<release>-slim to test the upstream path instead.
OFFLINE = os.environ.get("EKS_INFERENCE_IMAGES_OFFLINE", "1") != "0"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.containers)
            # A cold run builds the torch base (several GB of wheels) inside the first test's fixtures.
            item.add_marker(pytest.mark.timeout(BUILD_TIMEOUT_S))


@pytest.fixture(scope="session")
def docker_engine() -> None:
    if not image_docker.docker_available():
        pytest.fail("no docker engine answers; start one with .ci/docker-engine.sh")


@pytest.fixture(scope="session")
def demo_models() -> Path:
    """The demo bundles, built (idempotently) where the service Dockerfiles bake them from."""
    from ops.models import build_all  # type: ignore[attr-defined,unused-ignore]

    out = REPO / "models"
    build_all(out)
    return out


@pytest.fixture(scope="session")
def build_records() -> dict[str, image_build.BuildRecord]:
    """Every image built in this session, by kind, for the report."""
    return {}


@pytest.fixture(scope="session")
def cpu_images(
    docker_engine: None, demo_models: Path, build_records: dict[str, image_build.BuildRecord]
) -> dict[str, str]:
    """The CPU base and both services on it (an unchanged base is reused by its inputs fingerprint)."""
    refs: dict[str, str] = {}
    base = image_build.build_base("cpu", offline=OFFLINE)
    build_records["base-cpu"] = base
    refs["base"] = base.image
    for name in core.SERVICES:
        record = image_build.build_service(name, "cpu", offline=OFFLINE)
        build_records[f"{name}-cpu"] = record
        refs[name] = record.image
    return refs


@pytest.fixture(scope="session")
def cuda_images(
    docker_engine: None, demo_models: Path, build_records: dict[str, image_build.BuildRecord]
) -> dict[str, str]:
    """The CUDA base (its build runs the arch check) and the image classifier on it."""
    base = image_build.build_base("cuda", offline=OFFLINE)
    build_records["base-cuda"] = base
    record = image_build.build_service("image-classifier", "cuda", offline=OFFLINE)
    build_records["image-classifier-cuda"] = record
    return {"base": base.image, "image-classifier": record.image}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Running:
    """A started service container and how to reach it."""

    container: DockerContainer
    url: str
    started_at: float
    ready_after_s: float

    @property
    def wrapped(self) -> Any:
        return self.container.get_wrapped_container()


def wait_ready(url: str, timeout_s: float, container: DockerContainer) -> float:
    """Poll /readyz until 200; returns the seconds it took. Fails early when the container exits."""
    started = time.monotonic()
    deadline = started + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{url}/readyz").status_code == 200:
                    return time.monotonic() - started
            container.get_wrapped_container().reload()
            if container.get_wrapped_container().status == "exited":
                logs = container.get_logs()
                pytest.fail(f"container exited before ready:\n{logs[0].decode()[-3000:]}\n{logs[1].decode()[-3000:]}")
            time.sleep(0.1)
    pytest.fail(f"{url}/readyz not 200 within {timeout_s}s")


@pytest.fixture(scope="session")
def run_service() -> Callable[..., contextlib.AbstractContextManager[Running]]:
    """`with run_service(image, name, env) as svc:` runs a service container, removed on exit."""
    return _run_service


@contextlib.contextmanager
def _run_service(image: str, name: str, env: dict[str, str] | None = None) -> Iterator[Running]:
    """Run a service image as production does: host network on a loopback port, read-only root fs, tmpfs /tmp."""
    spec = core.SERVICES[name]
    port = free_port()
    container = (
        DockerContainer(image)
        .with_env(f"{spec.env_prefix}HOST", "127.0.0.1")
        .with_env(f"{spec.env_prefix}PORT", str(port))
        .with_env(f"{spec.env_prefix}LOG_FORMAT", "text")
        .with_kwargs(
            network_mode="host",
            read_only=True,
            cpu_quota=100_000,
            cpu_period=100_000,
            mem_limit="3g",
        )
    )
    # The pod's emptyDir; the dict holds docker's tmpfs mount options.
    container.tmpfs["/tmp"] = "rw,nosuid,nodev,size=512m"
    for key, value in (env or {}).items():
        container = container.with_env(key, value)
    started = time.monotonic()
    container.start()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, READY_TIMEOUT_S, container)
        yield Running(container, url, started, time.monotonic() - started)
    finally:
        with contextlib.suppress(Exception):
            container.stop()
