"""The parity cluster for the session, brought up as a user does it: `invoke up --parity --detach`.

Needs what tests/kind needs (a docker engine that runs privileged containers; .ci/run starts one), and runs after
tests/kind, whose cluster test_3_down.py has deleted by then: both clusters never run at once, and the node image
and the service images tests/kind built are reused (cached by content), never built twice.

The cluster gets its own kubeconfig under the session's temp folder. Teardown deletes it, and the fixture image
host container (test_cluster.py); `EKS_INFERENCE_PARITY_KEEP=1` keeps the cluster (and reuses a kept one) for
working on the tests, never in CI, and with `EKS_INFERENCE_PARITY_AS_IS=1` too the tests run on it as it stands.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kindkit import UP_TIMEOUT_S, KindSession, invoke
from ops.images import docker as image_docker
from ops.k8s import deploy, parity
from ops.k8s import kind as kind_mod

REPO = Path(__file__).resolve().parents[2]
REPORT = REPO / "build" / "reports" / "parity.json"
KEEP = os.environ.get("EKS_INFERENCE_PARITY_KEEP") == "1"
# Run against the kept cluster as it stands, without `invoke up` (which would re-apply the render): for putting a
# test's cause back by hand (a policy deleted, the engine removed) and watching the test fail. Never in CI.
AS_IS = KEEP and os.environ.get("EKS_INFERENCE_PARITY_AS_IS") == "1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents and Path(str(item.fspath)).name == "test_cluster.py":
            item.add_marker(pytest.mark.kind)
            item.add_marker(pytest.mark.timeout(UP_TIMEOUT_S))


def _step_seconds(output: str, step: str) -> float | None:
    """A step's seconds from the table `invoke up --parity` prints (rich draws it with box characters)."""
    match = re.search(rf"{re.escape(step)}\s*[│|]\s*([\d.]+)", output)
    return float(match.group(1)) if match else None


@pytest.fixture(scope="session")
def parity_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KindSession]:
    if not image_docker.docker_available():
        pytest.fail("no docker engine answers; start one with .ci/docker-engine.sh")
    kubeconfig = tmp_path_factory.mktemp("parity") / "kubeconfig.yaml"
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    kind = kind_mod.Kind(parity.cluster_name(), kubeconfig=kubeconfig)
    if kind.exists() and not KEEP:
        kind_mod.down(kind)  # a cluster left by an aborted session would hide what `up` does from scratch
    if AS_IS:
        if not kind.exists():
            pytest.fail("EKS_INFERENCE_PARITY_AS_IS=1 needs a kept parity cluster (EKS_INFERENCE_PARITY_KEEP=1)")
        kind.run("export", "kubeconfig", "--name", kind.name)
        yield KindSession(kind, deploy.Kubectl(kind.context, kubeconfig), env, 0.0, "")
        return
    started = time.monotonic()
    proc = invoke("up", "--parity", "--detach", "--kubeconfig", str(kubeconfig), env=env)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        if not KEEP:
            kind_mod.down(kind)
        pytest.fail(f"invoke up --parity failed ({proc.returncode}):\n{proc.stdout[-8000:]}\n{proc.stderr[-6000:]}")
    session = KindSession(kind, deploy.Kubectl(kind.context, kubeconfig), env, seconds, proc.stdout + proc.stderr)
    session.report["invoke_up_parity_s"] = round(seconds, 1)
    output = proc.stdout + proc.stderr  # the step table is on stderr (ops.core.console)
    for step in ("node image", "cluster create", "kube-router", "metrics-server", "node devices", "images build",
                 "kind load", "total"):  # fmt: skip
        session.report[f"{step.replace(' ', '_').replace('-', '_')}_s"] = _step_seconds(output, step)
    session.report["apply_until_services_ready_s"] = _step_seconds(output, f"apply {parity.LABEL}")
    try:
        yield session
    finally:
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text(json.dumps(session.report, indent=2) + "\n")
        if not KEEP and kind.exists():
            kind_mod.down(kind)
