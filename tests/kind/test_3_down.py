"""Last of the kind tests: `invoke down` deletes the cluster and leaves no container, network or kube context."""

from __future__ import annotations

import time

from kindkit import KindSession, invoke


def test_down_leaves_nothing(kind_session: KindSession) -> None:
    started = time.monotonic()
    proc = invoke("down", "--kubeconfig", str(kind_session.kind.kubeconfig), env=kind_session.env, timeout=600)
    kind_session.report["invoke_down_s"] = round(time.monotonic() - started, 1)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not kind_session.kind.exists()
    assert kind_session.kind.leftovers() == []
