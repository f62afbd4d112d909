"""The manifest tests run without torch: collecting them (their modules and every conftest above them) loads none."""

from __future__ import annotations

import subprocess
import sys

from testkit import REPO

COLLECT = """
import sys, pytest
code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "tests/ops/k8s/manifests"])
print("TORCH_LOADED", "torch" in sys.modules, "EXIT", int(code))
"""


def test_collecting_the_manifest_tests_loads_no_torch() -> None:
    result = subprocess.run(
        [sys.executable, "-c", COLLECT], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert "TORCH_LOADED False EXIT 0" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
