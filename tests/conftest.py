"""Shared fixtures: demo bundles, real uvicorn servers on 127.0.0.1, and a loopback HTTP server for image URLs."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from testkit import REPO, Origin, Server, run_server

# The CI machines are small and busy: no per-example deadlines, and no health check on generation speed.
settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=60)
settings.load_profile("ci")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return  # torch is imported only where a test needs it: the manifest and ops tests never load it
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with CUDA; torch.cuda.is_available() is False here")
    for item in gpu_items:
        item.add_marker(skip)


class _Bundles(dict[str, Path]):
    """The demo bundles by name, each built (or reused) in models/ as `invoke models.build` does, on first use: the
    GPU machine runs the image tests without the text encoder's package."""

    def __missing__(self, name: str) -> Path:
        from ops.models import build_one  # torch: imported by the tests that use bundles, not by every test

        self[name] = build_one(name, REPO / "models")
        return self[name]


@pytest.fixture(scope="session")
def bundles() -> dict[str, Path]:
    return _Bundles()


@pytest.fixture(scope="module")
def image_env() -> dict[str, str]:
    """Settings every image classifier a module starts gets first: none here; tests/services/test_split.py turns
    the engine/front split on, and reruns the modules' tests against it."""
    return {}


@pytest.fixture
def image_server_factory(
    bundles: dict[str, Path], image_env: dict[str, str], tmp_path: Path
) -> Callable[..., AbstractContextManager[Server]]:
    def start(**env: str) -> AbstractContextManager[Server]:
        return run_server("image_classifier", {**image_env, "MODEL_URI": str(bundles["image-demo"]), **env}, tmp_path)

    return start


@pytest.fixture(scope="module")
def image_service(
    bundles: dict[str, Path], image_env: dict[str, str], origin: Origin, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One image classifier shared by a module's tests; the loopback origin's port may be fetched from."""
    allowed = origin.url.removeprefix("http://")  # 127.0.0.1:<port>: the allow-list is per host and port
    env = {**image_env, "MODEL_URI": str(bundles["image-demo"]), "FETCH_ALLOWED_HOSTS": allowed, "MAX_BATCH_SIZE": "8"}
    with run_server("image_classifier", env, tmp_path_factory.mktemp("image")) as server:
        yield server


@pytest.fixture(scope="module")
def text_service(bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"MODEL_URI": str(bundles["text-demo"]), "MAX_BATCH_SIZE": "8"}
    with run_server("text_classifier", env, tmp_path_factory.mktemp("text")) as server:
        yield server


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    state = Origin(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.hits.append(self.path)
            state.gate.wait(60)
            if self.path in state.redirects:
                self.send_response(302)
                self.send_header("Location", state.redirects[self.path])
                self.end_headers()
                return
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
