"""uv.lock: the requirement files of each image, the package closures, and the host wheelhouse they install from."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ops.core import REPO_ROOT, Service, cache_root, console
from ops.fileserver import FileServer
from ops.images.docker import ImageError, fingerprint, run
from ops.images.versions import Base, cpu_pins, load_versions

LOCK_PATH = REPO_ROOT / "uv.lock"


# Generated requirement files live here; `.dockerignore` lets exactly this folder into the build context.
GENERATED_DIR = REPO_ROOT / "build" / "images"


WHEELHOUSE_DIR = cache_root() / "wheelhouse"


# Fixed, so the build-arg (and with it the layer cache key) is the same on every build.
DEFAULT_WHEELHOUSE_PORT = 38611


def wheelhouse_url(port: int | None = None) -> str:
    port = port or int(os.environ.get("EKS_INFERENCE_WHEELHOUSE_PORT", DEFAULT_WHEELHOUSE_PORT))
    return f"http://127.0.0.1:{port}/"


def export_requirements() -> str:
    """The runtime dependencies of the project, pinned with hashes, straight from uv.lock."""
    return run(
        [
            "uv",
            "export",
            "--frozen",
            "--no-default-groups",
            "--no-emit-project",
            "--format",
            "requirements.txt",
            "--quiet",
        ],
        capture=True,
        quiet=True,
        effect=False,
    )


def split_requirements(text: str) -> dict[str, str]:
    """Map normalized package name -> its block (requirement line with markers and hash continuation lines)."""
    blocks: dict[str, str] = {}
    current: list[str] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            if current:
                blocks[normalize(current[0].split("==")[0])] = "\n".join(current)
            current = [line]
        else:
            current.append(line)
    if current:
        blocks[normalize(current[0].split("==")[0])] = "\n".join(current)
    return blocks


def normalize(name: str) -> str:
    """The package name as PEP 503 / `packaging` normalizes it (`Pydantic_Settings` -> `pydantic-settings`)."""
    return str(canonicalize_name(name))


def _lock_packages(lock_path: Path = LOCK_PATH) -> list[dict[str, Any]]:
    with lock_path.open("rb") as fh:
        packages: list[dict[str, Any]] = tomllib.load(fh)["package"]
    return packages


def locked_versions(lock_path: Path = LOCK_PATH) -> dict[str, str]:
    """package -> its locked version."""
    return {normalize(pkg["name"]): str(pkg["version"]) for pkg in _lock_packages(lock_path)}


def locked_wheel_hashes(lock_path: Path = LOCK_PATH) -> dict[str, str]:
    """Wheel file name -> sha256 for every wheel uv.lock records."""
    return {
        wheel["url"].rsplit("/", 1)[1]: wheel["hash"].removeprefix("sha256:")
        for pkg in _lock_packages(lock_path)
        for wheel in pkg.get("wheels", [])
    }


def optional_dependencies(lock_path: Path = LOCK_PATH) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """package -> extra -> the dependencies that extra adds, from uv.lock."""
    return {normalize(pkg["name"]): pkg.get("optional-dependencies", {}) for pkg in _lock_packages(lock_path)}


def marker_matches(marker: str | None, python_versions: Sequence[str]) -> bool:
    """Whether a dependency marker holds for CPython `python_versions` on x86_64 Linux (no marker: always)."""
    if not marker:
        return True
    parsed = Marker(marker)
    return any(
        parsed.evaluate(
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
        )
        for v in python_versions
    )


def lock_graph(lock_path: Path = LOCK_PATH, python_versions: Sequence[str] | None = None) -> dict[str, set[str]]:
    """package -> its direct dependencies, from uv.lock. Markers are ignored (a superset is safe for the images)
    unless `python_versions` is given: then only dependencies for CPython on x86_64 Linux at those versions."""
    optional = optional_dependencies(lock_path)
    graph: dict[str, set[str]] = {}
    for pkg in _lock_packages(lock_path):
        deps: set[str] = set()
        for dep in pkg.get("dependencies", []):
            if python_versions is not None and not marker_matches(dep.get("marker"), python_versions):
                continue
            name = normalize(dep["name"])
            deps.add(name)
            # `torch -> cuda-toolkit[cublas,...]`: the extras' packages are torch's dependencies too.
            for extra in dep.get("extra", []):
                deps.update(
                    normalize(d["name"])
                    for d in optional.get(name, {}).get(extra, [])
                    if python_versions is None or marker_matches(d.get("marker"), python_versions)
                )
        graph.setdefault(normalize(pkg["name"]), set()).update(deps)
    return graph


def closure(roots: Iterable[str], graph: dict[str, set[str]], stop: Iterable[str] = ()) -> set[str]:
    """`roots` and everything they depend on, not following (nor including) the packages in `stop`."""
    stopped = {normalize(s) for s in stop}
    seen: set[str] = set()
    todo = [normalize(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen or name in stopped:
            continue
        seen.add(name)
        todo.extend(graph.get(name, ()))
    return seen


def project_roots() -> list[str]:
    """The runtime dependencies pyproject.toml declares, with the packages their extras add (`uvicorn[standard]`
    brings uvloop and httptools)."""
    with (REPO_ROOT / "pyproject.toml").open("rb") as fh:
        deps = tomllib.load(fh)["project"]["dependencies"]
    optional = optional_dependencies()
    roots: list[str] = []
    for requirement in map(Requirement, deps):
        name = normalize(requirement.name)
        roots.append(name)
        for extra in sorted(requirement.extras):
            roots.extend(normalize(dep["name"]) for dep in optional.get(name, {}).get(extra, []))
    return roots


def base_packages() -> set[str]:
    """torch, torchvision and everything they pull in: what the base images hold."""
    return closure(["torch", "torchvision"], lock_graph())


def locked_base_closure(lock_path: Path = LOCK_PATH) -> str:
    """What uv.lock pins for the base images, read from the file alone: one line per package of `base_packages`
    with its version and the sha256 of every artefact (the input of the base tags; no uv, no network)."""
    names = base_packages()
    lines = []
    for pkg in sorted(_lock_packages(lock_path), key=lambda p: normalize(p["name"])):
        if normalize(pkg["name"]) in names:
            hashes = sorted(a["hash"] for a in [*pkg.get("wheels", []), *([pkg["sdist"]] if "sdist" in pkg else [])])
            lines.append(f"{normalize(pkg['name'])}=={pkg['version']} {' '.join(hashes)}")
    return "\n".join(lines)


def service_packages(spec: Service) -> set[str]:
    """What the service needs on top of its base."""
    graph = lock_graph()
    roots = [r for r in project_roots() if r not in {normalize(u) for u in spec.unused}]
    return closure(roots, graph) - base_packages()


def render_requirements(blocks: dict[str, str], names: Iterable[str]) -> str:
    """A hash-pinned requirement file for `names`, from the uv export blocks."""
    wanted = sorted(set(names) & set(blocks))
    # The text ('ops/images.py', its old home) is part of the base image fingerprint: changing it rebuilds every base.
    header = "# Generated by ops/images.py from uv.lock; do not edit.\n"
    return header + "\n".join(blocks[n] for n in wanted) + "\n"


def ensure_wheelhouse(export_text: str, *, extra_pip_args: Iterable[str] = ()) -> Path:
    """Download every locked wheel (hash-checked) into the shared wheelhouse once per distinct export."""
    WHEELHOUSE_DIR.mkdir(parents=True, exist_ok=True)
    pins = "\n".join(ln for ln in export_text.splitlines() if not ln.lstrip().startswith("#"))
    stamp = WHEELHOUSE_DIR / f".complete-{fingerprint(pins)}"
    if stamp.is_file():
        console.print(f"[green]wheelhouse complete[/green] {WHEELHOUSE_DIR}")
        return WHEELHOUSE_DIR
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write(export_text)
        req = fh.name
    try:
        started = time.monotonic()
        run(
            [
                str(REPO_ROOT / ".venv" / "bin" / "python"),
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--require-hashes",
                "--progress-bar",
                "off",
                "-r",
                req,
                "-d",
                str(WHEELHOUSE_DIR),
                *extra_pip_args,
            ]
        )
        console.print(f"wheelhouse downloaded in {time.monotonic() - started:.0f}s")
    finally:
        os.unlink(req)
    stamp.write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + "\n")
    return WHEELHOUSE_DIR


def cpu_index_reachable(url: str, timeout_s: float = 5.0) -> bool:
    """Whether the PyTorch CPU wheel index answers (it does not on machines without internet)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/torch/", timeout=timeout_s) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, TimeoutError, OSError):
        return False


def base_requirements_path() -> Path:
    """Where the requirements of the base being built go: one path for both bases, so they can share layers."""
    return GENERATED_DIR / "base" / "requirements.txt"


def write_requirements(base: Base) -> tuple[str, Path, str]:
    """Write the base's requirement file into the build context; returns (wheel source note, path, wheel variant)."""
    v = load_versions()
    export = export_requirements()
    ensure_wheelhouse(export)
    blocks = split_requirements(export)
    target = base_requirements_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    variant = str(v["pytorch"]["wheel_variant"])
    source = f"pypi {variant} wheels (locked in uv.lock, hash-checked)"
    text = render_requirements(blocks, base_packages())
    if base == "cpu":
        index = str(v["pytorch"]["cpu_index_url"])
        if cpu_index_reachable(index):
            text, variant = render_cpu_index_requirements(blocks, download_cpu_wheels(index)), "cpu"
            source = f"PyTorch CPU index {index}"
        else:
            source = f"pypi {variant} wheels, run on CPU (CPU index {index} unreachable)"
            console.print(f"[yellow]CPU index unreachable ({index}); the CPU base uses the PyPI CUDA wheels[/yellow]")
    write_stable(target, text)
    return source, target, variant


def download_cpu_wheels(index: str, wheelhouse: Path = WHEELHOUSE_DIR) -> dict[str, list[str]]:
    """Download the `+cpu` wheels from the CPU index; returns package -> sha256 of the wheels downloaded.

    uv.lock cannot hold hashes for them (it locks the PyPI wheels), so the hashes of what the configured index
    served are pinned for the in-image install, which then stays fully hash-checked.
    """
    python = str(REPO_ROOT / ".venv" / "bin" / "python")
    pins = [f"{name}=={version}" for name, version in cpu_pins().items()]
    run([python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--index-url", index,
         "-d", str(wheelhouse), *pins])  # fmt: skip
    hashes: dict[str, list[str]] = {}
    for name, version in cpu_pins().items():
        wheels = sorted(wheelhouse.glob(f"{name}-{version}-*.whl"))
        if not wheels:
            raise ImageError(f"the CPU index served no wheel for {name}=={version}")
        hashes[name] = [hashlib.sha256(w.read_bytes()).hexdigest() for w in wheels]
    return hashes


def render_cpu_index_requirements(blocks: dict[str, str], cpu_hashes: dict[str, list[str]]) -> str:
    """`+cpu` torch/torchvision (hashes of the downloaded wheels) plus their locked CPU-side dependencies.

    The CUDA-only packages (nvidia-*, cuda-*, triton) that the PyPI wheels pull in are left out.
    """
    cuda_only = re.compile(r"^(nvidia-|cuda-|triton$)")
    names = [n for n in base_packages() if n not in cpu_pins() and not cuda_only.match(n)]
    pinned = [
        f"{name}=={version} " + " ".join(f"--hash=sha256:{h}" for h in cpu_hashes[name])
        for name, version in cpu_pins().items()
    ]
    deps = [blocks[n] for n in sorted(names) if n in blocks]
    return "# Generated by ops/images.py (PyTorch CPU index); do not edit.\n" + "\n".join(pinned + deps) + "\n"


def write_stable(path: Path, text: str) -> None:
    """Write a generated file with a fixed mtime, so only its content can change a COPY layer's cache key."""
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    os.utime(path, (315532800, 315532800))  # 1980-01-01, as in reproducible wheels


def write_service_requirements(spec: Service) -> Path:
    export = export_requirements()
    ensure_wheelhouse(export)
    GENERATED_DIR.mkdir(parents=True, exist_ok=True)
    target = GENERATED_DIR / f"{spec.name}.txt"
    write_stable(target, render_requirements(split_requirements(export), service_packages(spec)))
    return target


@contextlib.contextmanager
def serve_wheelhouse(directory: Path = WHEELHOUSE_DIR, port: int | None = None) -> Iterator[str]:
    """Serve the wheelhouse on 127.0.0.1 for the length of a build (the build runs with --network host)."""
    url = wheelhouse_url(port)
    bind_port = int(url.rsplit(":", 1)[1].strip("/"))
    try:
        server = FileServer(directory, bind_port, name="wheelhouse")
    except OSError as exc:
        raise ImageError(
            f"cannot serve the wheelhouse on 127.0.0.1:{bind_port} ({exc}); "
            "set EKS_INFERENCE_WHEELHOUSE_PORT to a free port"
        ) from exc
    with server:
        yield url
