"""The `invoke manifests.*` tasks, driven through the real invoke CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from ops import core
from ops.k8s import docs as k8s_docs
from ops.k8s import objects, policies, render


def inv(*args: str) -> subprocess.CompletedProcess[str]:
    """Run one task of the manifests collection (ops/tasks/manifests.py) with invoke's CLI."""
    argv = [sys.executable, "-m", "invoke", "-r", "ops/tasks", "-c", "manifests", *args]
    env = {**os.environ, "COLUMNS": "120", "NO_COLOR": "1"}
    return subprocess.run(argv, cwd=core.REPO_ROOT, capture_output=True, text=True, timeout=300, env=env, check=False)


def test_render_prints_the_overlay() -> None:
    proc = inv("render", "--overlay", "eks-prod")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == render.render_text("eks-prod")


def test_render_with_an_optional_component_to_a_file(tmp_path: Path) -> None:
    out = tmp_path / "prod.yaml"
    proc = inv("render", "--overlay", "eks-prod", "--component", "gpu-queue-autoscaling", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(out.read_text()) if d]
    hpa = objects.hpa_for(docs, "image-classifier")
    assert hpa is not None
    assert any(x["type"] == "External" for x in hpa["spec"]["metrics"])


def test_render_of_an_unknown_overlay_fails() -> None:
    proc = inv("render", "--overlay", "qa")
    assert proc.returncode == 1
    assert "unknown overlay 'qa'" in proc.stderr


def test_validate_passes_on_the_repository() -> None:
    proc = inv("validate")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Kustomize {render.pinned_kustomize_version()}" in proc.stdout
    for overlay in render.OVERLAYS:
        assert overlay in proc.stdout
    for name in policies.POLICIES:
        assert name in proc.stdout


def test_validate_fails_and_names_the_violation(tmp_path: Path) -> None:
    # The bare base as if it were an EKS overlay: no GPU, no node pools, no add-ons.
    base = os.path.relpath(render.MANIFESTS_DIR / "base", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(f"resources: [{base}]\n")
    proc = inv("validate", "--overlay", str(tmp_path))
    assert proc.returncode == 1
    assert "add-on nvidia-device-plugin is missing" in proc.stdout
    assert "IMAGE_CLASSIFIER_DEVICE must be cuda" in proc.stdout


def test_diagram_prints_the_generated_mermaid() -> None:
    proc = inv("diagram")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == k8s_docs.mermaid()
