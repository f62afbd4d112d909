"""The wheel folder bench/gpu/run.sh installs on a CUDA machine that has torch: pins from uv.lock, pip download."""

from __future__ import annotations

import hashlib
import shutil
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename

from ops import core
from ops.images.lock import (
    LOCK_PATH,
    closure,
    lock_graph,
    locked_versions,
    locked_wheel_hashes,
    normalize,
    optional_dependencies,
)

# CPython versions the GPU machine may run (binary wheels are fetched for each).
PYTHON_VERSIONS = ("3.11", "3.12", "3.13")
# Where `invoke bench.wheels` fills the folder bench/gpu/run.sh --wheels reads.
DEST = core.REPO_ROOT / "build" / "gpu-wheels"

# The extras of `uvicorn[standard]` (pyproject.toml) that the service imports when it runs: httptools (its HTTP
# protocol is httptools', serving.protocol) and uvloop (uvicorn's `loop="auto"` takes it when importable). The
# service needs none of the rest: websockets (no WebSocket route; uvicorn imports it only for `ws`), watchfiles
# (reload mode only), pyyaml (YAML log configs only; ours is a dict), python-dotenv (pydantic-settings brings it).
# They still travel, because LitServe (PEER_ROOTS) requires all of `uvicorn[standard]`.
UVICORN_STANDARD_USED = ("httptools", "uvloop")
# The peer servers bench/gpu/run.sh starts beside ours that fit in the wheel folder (LitServe: a few hundred KB
# with pyzmq). PyTriton does not: docs/bench.md says why.
PEER_ROOTS = ("litserve",)
# What the image service and the benchmark runner import that a torch machine lacks.
ROOTS = (
    "fastapi",
    "uvicorn",
    *UVICORN_STANDARD_USED,
    "pydantic",
    "pydantic-settings",
    "safetensors",
    "python-json-logger",
    "rich",
    "pytest-timeout",
    "hypothesis",  # tests/conftest.py: the GPU-only tests run on the device too (bench/gpu/run.sh)
    *PEER_ROOTS,
)
# Already on the GPU machine (bench/gpu/run.sh lists them): never shipped, and their dependencies not followed.
PRESENT = (
    "torch",
    "torchvision",
    "pillow",
    "httpx",
    "prometheus-client",
    "pytest-benchmark",
    "pytest",
    "numpy",
)
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")


def pinned_requirements(
    lock: Path = LOCK_PATH,
    roots: Iterable[str] = ROOTS,
    present: Iterable[str] = PRESENT,
    python_versions: Sequence[str] = PYTHON_VERSIONS,
) -> dict[str, str]:
    """name -> version for the dependency closure of `roots` in uv.lock (ops.images.lock, the images' closure),
    minus what the GPU machine has."""
    names = closure(roots, lock_graph(lock, python_versions), stop=present)
    versions = locked_versions(lock)
    return {name: versions[name] for name in sorted(names)}


def uvicorn_standard_extras(lock: Path = LOCK_PATH) -> set[str]:
    """The packages `uvicorn[standard]` adds, from uv.lock."""
    return {normalize(dep["name"]) for dep in optional_dependencies(lock).get("uvicorn", {}).get("standard", [])}


def requirements_text(pins: dict[str, str]) -> str:
    """A requirements file of exact pins."""
    return "".join(f"{name}=={version}\n" for name, version in pins.items())


def download_commands(requirements: Path, dest: Path, python_versions: Sequence[str]) -> list[list[str]]:
    """pip download of binary wheels for each CPython version on x86_64 Linux (pure wheels are fetched once)."""
    commands = []
    for version in python_versions:
        argv = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            version,
            "--dest",
            str(dest),
            "-r",
            str(requirements),
        ]
        for platform in PLATFORMS:
            argv += ["--platform", platform]
        commands.append(argv)
    return commands


def verify(dest: Path, lock: Path = LOCK_PATH) -> tuple[list[str], list[str]]:
    """Check downloaded wheels against uv.lock's hashes; write SHA256SUMS. Returns (verified, not in lock)."""
    known = locked_wheel_hashes(lock)
    verified, unlocked, sums = [], [], []
    for wheel in sorted(dest.glob("*.whl")):
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        sums.append(f"{digest}  {wheel.name}\n")
        if wheel.name in known:
            if known[wheel.name] != digest:
                raise ValueError(f"{wheel.name}: sha256 {digest} differs from uv.lock {known[wheel.name]}")
            verified.append(wheel.name)
        else:
            unlocked.append(wheel.name)  # e.g. pydantic-core for another CPython: same version, not in our lock
    (dest / "SHA256SUMS").write_text("".join(sums))
    return verified, unlocked


def wheel_projects(dest: Path) -> set[str]:
    """Canonical project names of the wheels in a folder."""
    return {canonicalize_name(parse_wheel_filename(w.name)[0]) for w in dest.glob("*.whl")}


def fill(dest: Path = DEST, python_versions: Sequence[str] = PYTHON_VERSIONS, vegeta: bool = True) -> None:
    """`invoke bench.wheels`: requirements.txt, the wheels (pip download, checked against uv.lock's hashes),
    SHA256SUMS and, with `vegeta`, bin/vegeta. Under a dry run the downloads are only shown."""
    pins = pinned_requirements()
    requirements = dest / "requirements.txt"
    if not core.is_dry():
        dest.mkdir(parents=True, exist_ok=True)
        requirements.write_text(requirements_text(pins))
    for argv in download_commands(requirements, dest, python_versions):
        core.run(argv, capture=False, echo=True)
    if core.is_dry():
        return
    if vegeta:
        from ops.perf.load import vegeta_path

        (dest / "bin").mkdir(exist_ok=True)
        shutil.copy2(vegeta_path(), dest / "bin" / "vegeta")
    verified, unlocked = verify(dest)
    missing = set(pins) - wheel_projects(dest)
    if missing:
        raise core.OpsError(f"no wheel downloaded for: {', '.join(sorted(missing))}")
    core.console.print(
        f"{len(pins)} packages, {len(verified) + len(unlocked)} wheels -> {dest} "
        f"({len(verified)} match uv.lock hashes; {len(unlocked)} other-CPython builds of locked versions: "
        f"{', '.join(unlocked) or '-'}; all in SHA256SUMS)"
    )
