"""The Tiltfile on the session's kind cluster: `invoke up --ci` (tilt ci), then live update without a rebuild.

Tilt is a prerequisite users install; no registry these machines reach serves it. Where `tilt` is not on PATH
these tests skip with that reason.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from kindkit import REPO, KindSession, invoke
from ops.k8s import kind as kind_mod

pytestmark = pytest.mark.skipif(
    shutil.which("tilt") is None,
    reason="tilt is not installed (a prerequisite users install; no registry reachable here serves it)",
)

APP = REPO / "services" / "image_classifier" / "app.py"
TITLE = 'title="Image classifier"'


def _pods(session: KindSession, name: str) -> list[dict[str, Any]]:
    pods = session.json("-n", kind_mod.NAMESPACE, "get", "pods", "-l", f"app.kubernetes.io/name={name}")["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def _pod_uids(session: KindSession, name: str) -> set[str]:
    return {p["metadata"]["uid"] for p in _pods(session, name)}


def _images(session: KindSession, name: str) -> set[str]:
    """The images the service's running pods were started from (the service under test, not the whole cluster)."""
    return {c["image"] for p in _pods(session, name) for c in p["spec"]["containers"]}


def test_invoke_up_ci_runs_tilt_ci(kind_session: KindSession) -> None:
    started = time.monotonic()
    proc = invoke("up", "--ci", "--kubeconfig", str(kind_session.kind.kubeconfig), env=kind_session.env)
    kind_session.report["tilt_ci_s"] = round(time.monotonic() - started, 1)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    for name in ("image-classifier", "text-classifier"):
        dep = kind_session.json("-n", kind_mod.NAMESPACE, "get", "deployment", name)
        assert dep["status"].get("readyReplicas", 0) >= 1
        # Tilt deployed its own build (tilt-<digest> tags) through the local-live overlay.
        assert ":tilt-" in dep["spec"]["template"]["spec"]["containers"][0]["image"]


def _title(url: str) -> str:
    try:
        return str(httpx.get(f"{url}/openapi.json", timeout=5).json()["info"]["title"])
    except (httpx.HTTPError, ValueError, KeyError):
        return ""


def test_live_update_serves_an_edit_without_rebuild(kind_session: KindSession, tmp_path: Path) -> None:
    """Edit the title the image classifier reports; the running pod serves it, same pod, no image rebuild."""
    env = {**kind_session.env, "DOCKER_BUILDKIT": "0", "INVOKE_IMAGES_OFFLINE": "1"}
    env["PATH"] = os.pathsep.join([str(Path(kind_session.kind.binary).parent), env.get("PATH", "")])
    log = (tmp_path / "tilt.log").open("w")
    tilt = subprocess.Popen(
        [
            "tilt", "up", "--context", kind_session.kind.context, "--host", "127.0.0.1", "--port", "10399",
            "--stream", "--", "image-classifier",
        ],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    original = APP.read_text()
    url = "http://127.0.0.1:8080"
    try:
        # Tilt's own first deploy may replace the pods already there: wait until Tilt calls the resource ready
        # and the rollout is over before taking the pod's identity.
        wait = ["tilt", "wait", "--host", "127.0.0.1", "--port", "10399", "--timeout=60s"]
        wait += ["--for=condition=Ready", "uiresource/image-classifier"]
        deadline = time.monotonic() + 900
        while subprocess.run(wait, env=env, capture_output=True, check=False).returncode != 0:
            assert tilt.poll() is None, (tmp_path / "tilt.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "Tilt never called image-classifier ready"
            time.sleep(2)
        kind_session.kubectl.run(
            "-n", kind_mod.NAMESPACE, "rollout", "status", "deployment/image-classifier", "--timeout=300s", timeout=330
        )
        deadline = time.monotonic() + 120
        while _title(url) != "Image classifier":
            assert tilt.poll() is None, (tmp_path / "tilt.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "the service did not answer through Tilt's port-forward"
            time.sleep(1)
        before = _pod_uids(kind_session, "image-classifier")
        images_before = _images(kind_session, "image-classifier")
        token = uuid.uuid4().hex[:8]
        saved = time.monotonic()
        APP.write_text(original.replace(TITLE, f'title="Image classifier (live {token})"', 1))
        while token not in _title(url):
            assert time.monotonic() - saved < 120, "the edit was not served within 120 s"
            time.sleep(0.2)
        seconds = time.monotonic() - saved
        kind_session.report["live_update_s"] = round(seconds, 2)
        assert _pod_uids(kind_session, "image-classifier") == before, "the pod was replaced"
        images_after = _images(kind_session, "image-classifier")
        assert images_after == images_before, "a new image was deployed"
    finally:
        APP.write_text(original)
        os.killpg(tilt.pid, signal.SIGINT)
        try:
            tilt.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(tilt.pid, signal.SIGKILL)
        log.close()
