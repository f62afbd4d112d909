"""torch's OpenMP pool waits passively: idle pool threads sleep instead of spinning on the cores the event loop needs.

libgomp reads OMP_WAIT_POLICY once, when torch loads it, so the policy must be in the environment before the entry
point imports the app. Spinning pool threads took about 0.7 of a core on 2 cores at twice the image_url path's
saturation, and every answer (the fast 503s too) waited behind them (the chaos report has the figures).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from image_classifier.settings import Settings
from testkit import REPO, run_server


def test_the_policy_is_passive_unless_the_operator_set_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "unset")  # recorded, so the test leaves the environment as it found it
    monkeypatch.delenv("OMP_WAIT_POLICY")
    Settings(model_uri="x").prepare_native_runtime()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # an explicit choice in the pod spec wins
    Settings(model_uri="x").prepare_native_runtime()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.setenv("IMAGE_CLASSIFIER_OPENMP_WAIT_POLICY", "active")
    monkeypatch.delenv("OMP_WAIT_POLICY")
    Settings(model_uri="x").prepare_native_runtime()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


# Runs the real entry point with the policy hook checked: torch must not be loaded yet when the policy is set.
ENTRY_ORDER = """
import runpy, sys
from serving.settings import ServingSettings
real = ServingSettings.prepare_native_runtime
def checked(self):
    print("torch loaded before the policy" if "torch" in sys.modules else "policy first", flush=True)
    real(self)
    raise SystemExit(0)
ServingSettings.prepare_native_runtime = checked
runpy.run_module(sys.argv[1], run_name="__main__")
print("the entry point never set the policy")
"""


@pytest.mark.parametrize("package", ["image_classifier", "text_classifier"])
def test_each_entry_point_sets_the_policy_before_torch_loads(package: str) -> None:
    env = {"PYTHONPATH": f"{REPO / 'services'}:{REPO}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", ENTRY_ORDER, package], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip() == "policy first", done.stdout + done.stderr


@pytest.mark.parametrize("service", ["image", "text"])
def test_a_running_service_reports_the_policy_torch_loaded_with(
    service: str, bundles: dict[str, Path], tmp_path: Path
) -> None:
    module = f"{service}_classifier"
    with run_server(module, {"MODEL_URI": str(bundles[f"{service}-demo"])}, tmp_path) as server:
        info = httpx.get(f"{server.url}/v1/models", timeout=30).json()
    assert info["openmp_wait_policy"] == "PASSIVE"
    assert info["torch_threads"] >= 1
