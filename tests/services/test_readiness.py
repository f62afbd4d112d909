"""Readiness while loading: the port answers at once, 503 `loading` until the model is warm; a failed load exits.

The model bundle comes from a loopback origin that holds its answer until the test lets it go, so "still loading"
is a state the test controls rather than a race it hopes to win.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from loadkit import report_timing
from ops.perf.localservice import ServiceStartError
from serving.bundle import pack_bundle
from testkit import Origin, Server


@dataclass
class GatedBundle:
    """A bundle archive served on 127.0.0.1 only once `gate` is set."""

    url: str
    sha256: str
    gate: threading.Event


@pytest.fixture
def gated_bundle(bundles: dict[str, Path], origin: Origin, tmp_path: Path) -> Iterator[GatedBundle]:
    archive = tmp_path / "image-demo.tar.gz"
    digest = pack_bundle(bundles["image-demo"], archive)
    origin.files["/image-demo.tar.gz"] = archive.read_bytes()
    origin.gate.clear()
    try:
        yield GatedBundle(f"{origin.url}/image-demo.tar.gz", digest, origin.gate)
    finally:
        origin.gate.set()


def start_loading(bundle: GatedBundle, tmp_path: Path, image_env: dict[str, str]) -> tuple[Server, httpx.Client]:
    """Start the image service on the gated bundle; return once its port answers /healthz (the model still loading)."""
    env = {
        **image_env,
        "MODEL_URI": bundle.url,
        "MODEL_SHA256": bundle.sha256,
        "MODEL_CACHE_DIR": str(tmp_path / "cache"),
    }
    server = Server("image_classifier", {"LOG_FORMAT": "json", **env}, log_path=tmp_path / "svc.log")

    def launch() -> None:  # start() returns once ready (or raises when the process exits): here it only launches
        with contextlib.suppress(ServiceStartError):
            server.start()

    threading.Thread(target=launch, daemon=True).start()
    client = httpx.Client(base_url=server.url, timeout=5)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if client.get("/healthz").status_code == 200:
                return server, client
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"the port never answered while loading: {server.log_tail()}")


def test_the_port_answers_503_loading_until_the_model_is_warm(
    gated_bundle: GatedBundle, tmp_path: Path, image_env: dict[str, str]
) -> None:
    server, client = start_loading(gated_bundle, tmp_path, image_env)
    try:
        ready = client.get("/readyz")
        assert (ready.status_code, ready.json()) == (503, {"status": "loading"})
        predict = client.post("/v1/predict", content=b"\xff\xd8", headers={"content-type": "image/jpeg"})
        assert predict.status_code == 503, predict.text
        assert predict.json()["error"]["code"] == "not_ready"
        assert predict.headers["retry-after"] == "1"
        assert client.get("/v1/models").status_code == 503
        gated_bundle.gate.set()
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.1)
        assert client.get("/v1/models").json()["name"]
    finally:
        client.close()
        code = server.stop()
    assert code == 0
    assert '"level": "ERROR"' not in server.log_tail(1_000_000)


def test_sigterm_while_loading_exits_at_once_and_cleanly(
    gated_bundle: GatedBundle, tmp_path: Path, image_env: dict[str, str]
) -> None:
    server, client = start_loading(gated_bundle, tmp_path, image_env)
    client.close()
    assert server.proc is not None
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(45)  # the download is held for 60 s: an exit before that did not wait for it
    report_timing("sigterm_while_loading", time.monotonic() - started, 10.0, "SIGTERM to exit, model still loading")
    assert code == 0, server.log_tail()


def test_a_model_that_fails_to_load_exits_non_zero_and_says_why(tmp_path: Path, image_env: dict[str, str]) -> None:
    env = {**image_env, "MODEL_URI": str(tmp_path / "no-such-bundle")}
    server = Server("image_classifier", {"LOG_FORMAT": "json", **env}, log_path=tmp_path / "svc.log")
    with pytest.raises(ServiceStartError, match="exited with 1"):
        server.start()
    log = server.log_tail(1_000_000)
    assert "the model failed to load" in log
    assert "not a model bundle" in log
