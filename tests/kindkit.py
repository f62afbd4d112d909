"""Helpers for the kind tests (tests/kind): run invoke tasks as a user does, and the session's cluster handle."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.k8s import deploy
from ops.k8s import kind as kind_mod

REPO = Path(__file__).resolve().parent.parent
# A cold machine builds the node image and the torch bases inside `invoke up`.
UP_TIMEOUT_S = 3600


def invoke(*args: str, env: dict[str, str], timeout: float = UP_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run an invoke task of this repository as a user would, output kept for the failure message."""
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "invoke"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    sys.stderr.write(proc.stderr[-20_000:])
    return proc


@dataclass
class KindSession:
    kind: kind_mod.Kind
    kubectl: deploy.Kubectl
    env: dict[str, str]
    up_seconds: float
    up_output: str
    report: dict[str, Any] = field(default_factory=dict)

    def json(self, *args: str) -> Any:
        return json.loads(self.kubectl.run(*args, "-o", "json").stdout)
