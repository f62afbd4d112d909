"""A real kind cluster for the session, brought up the way a user does it: `invoke up --no-tilt --detach`.

Needs a docker engine that can run privileged containers (kind nodes); .ci/run starts one. The cluster gets its
own kubeconfig under the session's temp folder, so a developer's ~/.kube/config is never touched. The last test
(test_3_down.py) deletes it; the fixture's teardown deletes it too when an
earlier failure stopped the session before that.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kindkit import UP_TIMEOUT_S, KindSession, invoke
from ops.images import docker as image_docker
from ops.k8s import deploy
from ops.k8s import kind as kind_mod

REPO = Path(__file__).resolve().parents[2]
REPORT = REPO / "build" / "reports" / "kind.json"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.kind)
            item.add_marker(pytest.mark.timeout(UP_TIMEOUT_S))


@pytest.fixture(scope="session")
def kind_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KindSession]:
    if not image_docker.docker_available():
        pytest.fail("no docker engine answers; start one with .ci/docker-engine.sh")
    kubeconfig = tmp_path_factory.mktemp("kind") / "kubeconfig.yaml"
    # Tilt (tests/kind/test_2_tilt.py) asks cloud.tilt.dev who you are once an hour; point it at loopback.
    tilt = {"TILT_CLOUD_ADDRESS": "localhost:9", "TILT_DISABLE_ANALYTICS": "1"}
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), **tilt}
    kind = kind_mod.Kind(kubeconfig=kubeconfig)
    if kind.exists():
        # A cluster left by an aborted session would hide what `up` does from scratch.
        kind_mod.down(kind)
    started = time.monotonic()
    proc = invoke("up", "--no-tilt", "--detach", "--kubeconfig", str(kubeconfig), env=env)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        kind_mod.down(kind)
        pytest.fail(f"invoke up failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    session = KindSession(kind, deploy.Kubectl(kind.context, kubeconfig), env, seconds, proc.stdout)
    session.report["invoke_up_s"] = round(seconds, 1)
    try:
        yield session
    finally:
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text(json.dumps(session.report, indent=2) + "\n")
        if kind.exists():
            kind_mod.down(kind)
