"""The GPU runner's wheels: the list follows uv.lock, and bench/gpu/install_wheels.py picks the matching build."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from ops.core import REPO_ROOT as REPO
from ops.perf.gpuwheels import pinned_requirements, requirements_text
from testkit import run_ok


def test_gpu_wheel_list_matches_the_lock() -> None:
    """bench/gpu/wheels.txt is the exact list the GPU run installs: it must follow uv.lock."""
    pins = pinned_requirements()
    assert {"fastapi", "uvicorn", "pydantic-core", "starlette"} <= set(pins)
    assert "torch" not in pins
    assert "httpx" not in pins
    assert (REPO / "bench" / "gpu" / "wheels.txt").read_text() == requirements_text(pins), "run `invoke bench.wheels`"


def _wheel(folder: Path, name: str, tag: str) -> Path:
    path = folder / f"{name}-1.0-{tag}.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}/__init__.py", f"TAG = {tag!r}\n")
        archive.writestr(
            f"{name}-1.0.dist-info/METADATA",
            f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        )
    return path


def test_install_wheels_picks_the_matching_build(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "purepkg", "py3-none-any")
    _wheel(wheels, "binpkg", "cp39-cp39-manylinux2014_x86_64")
    py = f"cp{sys.version_info.major}{sys.version_info.minor}"
    _wheel(wheels, "binpkg", f"{py}-{py}-manylinux2014_x86_64")
    (tmp_path / "req.txt").write_text("purepkg==1.0\nbinpkg==1.0\n")
    target = tmp_path / "site"
    run_ok(
        [
            sys.executable,
            "bench/gpu/install_wheels.py",
            str(wheels),
            str(target),
            "--requirements",
            str(tmp_path / "req.txt"),
        ],
        60,
    )
    check = run_ok(
        [sys.executable, "-c", "import binpkg, purepkg; print(binpkg.TAG)"],
        60,
        env={**os.environ, "PYTHONPATH": str(target)},
    )
    assert check.stdout.strip() == f"{py}-{py}-manylinux2014_x86_64"
    (tmp_path / "req.txt").write_text("missingpkg==1.0\n")
    proc = subprocess.run(
        [
            sys.executable,
            "bench/gpu/install_wheels.py",
            str(wheels),
            str(tmp_path / "s2"),
            "--requirements",
            str(tmp_path / "req.txt"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "missingpkg" in proc.stderr


def test_gpu_wheels_bring_the_uvicorn_extras_the_service_runs_on() -> None:
    """httptools (the service's protocol) and uvloop (uvicorn's loop="auto") travel, and they are uvicorn[standard]'s
    in uv.lock; without them the H200 run measured h11 and asyncio (issue 22)."""
    from ops.perf.gpuwheels import UVICORN_STANDARD_USED, uvicorn_standard_extras

    pins = pinned_requirements()
    assert set(UVICORN_STANDARD_USED) <= uvicorn_standard_extras()
    assert {"httptools", "uvloop", "litserve", "pyzmq"} <= set(pins)
