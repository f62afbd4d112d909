"""The wheel folder bench/gpu/run.sh installs on a CUDA machine that has torch: pins from uv.lock, pip download."""

from __future__ import annotations

import hashlib
import sys
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name, parse_wheel_filename
from rich.console import Console

from ops.core import REPO_ROOT

LOCK = REPO_ROOT / "uv.lock"
console = Console()

# What the image service and the benchmark runner import that a torch machine lacks.
ROOTS = (
    "fastapi",
    "uvicorn",
    "pydantic",
    "pydantic-settings",
    "safetensors",
    "python-json-logger",
    "rich",
    "pytest-timeout",
)
# Already on the GPU machine (ENVIRONMENT.md): never shipped, and their dependencies are not followed.
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


def _marker_matches(marker: str | None, python_versions: Sequence[str]) -> bool:
    if not marker:
        return True
    parsed = Marker(marker)
    environments = [
        {
            "python_version": v,
            "python_full_version": f"{v}.0",
            "sys_platform": "linux",
            "platform_system": "Linux",
            "platform_machine": "x86_64",
            "implementation_name": "cpython",
            "platform_python_implementation": "CPython",
            "os_name": "posix",
            "extra": "",
        }
        for v in python_versions
    ]
    return any(parsed.evaluate(env) for env in environments)


def pinned_requirements(
    lock: Path = LOCK,
    roots: Iterable[str] = ROOTS,
    present: Iterable[str] = PRESENT,
    python_versions: Sequence[str] = ("3.11", "3.12", "3.13"),
) -> dict[str, str]:
    """name -> version for the dependency closure of `roots` in uv.lock, minus what the GPU machine has."""
    packages = {canonicalize_name(p["name"]): p for p in tomllib.loads(lock.read_text())["package"]}
    stop = {canonicalize_name(n) for n in present}
    pins: dict[str, str] = {}
    todo = [canonicalize_name(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in pins or name in stop:
            continue
        package = packages[name]
        pins[name] = package["version"]
        for dep in package.get("dependencies", []):
            if _marker_matches(dep.get("marker"), python_versions):
                todo.append(canonicalize_name(dep["name"]))
    return dict(sorted(pins.items()))


def lock_hashes(lock: Path = LOCK) -> dict[str, str]:
    """Wheel file name -> sha256 for every wheel uv.lock records."""
    hashes = {}
    for package in tomllib.loads(lock.read_text())["package"]:
        for wheel in package.get("wheels", []):
            hashes[wheel["url"].rsplit("/", 1)[1]] = wheel["hash"].removeprefix("sha256:")
    return hashes


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


def verify(dest: Path, lock: Path = LOCK) -> tuple[list[str], list[str]]:
    """Check downloaded wheels against uv.lock's hashes; write SHA256SUMS. Returns (verified, not in lock)."""
    known = lock_hashes(lock)
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
