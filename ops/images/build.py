"""Building the torch bases and the service images, the pure build plan, the build report and pruning."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ops import core
from ops.core import IMAGE_PREFIX, REPO_ROOT, SERVICES, console
from ops.images.docker import ImageError, fingerprint, git_tag, image_exists, image_id, image_labels, image_size, run
from ops.images.lock import (
    locked_base_closure,
    serve_wheelhouse,
    wheelhouse_url,
    write_requirements,
    write_service_requirements,
)
from ops.images.osbase import ensure_os_base, os_image
from ops.images.versions import BASES, Base, base_matrix, base_version_tag, load_versions

REPORT_PATH = REPO_ROOT / "build" / "reports" / "images.json"


@dataclass
class BuildRecord:
    """What one `docker build` produced, for the report."""

    image: str
    kind: str
    seconds: float
    cached: bool
    size_bytes: int
    notes: list[str] = field(default_factory=list)


# The label a base carries: the fingerprint of what its build really installed (requirement file, build args, OS
# base image id), which only the build can know (the CPU index may or may not answer; the OS base may be rebuilt).
INSTALLED_LABEL = "org.eks-inference.installed"


def base_build_args(base: Base, os_image: str, torch_source: str, wheel_variant: str = "") -> dict[str, str]:
    """The version ARGs of a base Dockerfile, all taken from the base's part of the matrix (versions.base_matrix, which
    its fingerprint covers); `wheel_variant` "cpu" for CPU-index wheels."""
    m = base_matrix(base)
    args = {
        "BASE_OS_IMAGE": os_image,
        "DEBIAN_RELEASE": m["os"]["debian_release"],
        "PYTHON_VERSION": m["python"]["minor"],
        "TORCH_VERSION": m["pytorch"]["torch"],
        "TORCHVISION_VERSION": m["pytorch"]["torchvision"],
        "TORCH_WHEEL_VARIANT": wheel_variant or m["pytorch"]["wheel_variant"],
        "CUDA_VERSION": m["pytorch"]["cuda"],
        "TORCH_WHEEL_SOURCE": torch_source,
        "WHEELHOUSE_URL": wheelhouse_url(),
    }
    if base == "cuda":
        args["TARGET_CUDA_ARCHS"] = " ".join(m["archs"])
        args["MIN_DRIVER_VERSION"] = m["driver"]["min_version"]
    return args


def base_repository(base: Base) -> str:
    return f"{IMAGE_PREFIX}/base-{base}"


def docker_build(
    dockerfile: Path,
    tags: list[str],
    build_args: dict[str, str],
    *,
    no_cache: bool = False,
    context: Path = REPO_ROOT,
    labels: dict[str, str] | None = None,
) -> float:
    """Legacy-builder `docker build` (context: the repo root, whitelisted by .dockerignore); returns seconds."""
    # --force-rm: a failed step's container goes too (it would pin a ~6 GB intermediate image).
    cmd = ["nice", "-n", "19", "docker", "build", "--force-rm", "--network", "host"]
    cmd += ["-f", str(dockerfile.relative_to(context))]
    if no_cache:
        cmd.append("--no-cache")
    for tag in tags:
        cmd += ["-t", tag]
    for k, val in build_args.items():
        cmd += ["--build-arg", f"{k}={val}"]
    for k, val in (labels or {}).items():
        cmd += ["--label", f"{k}={val}"]
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
    """Full reference of the base image for the current inputs: a pure function of the files in the checkout (the
    Dockerfile, the check script, the base's part of the version matrix, uv.lock, the OS base's name). It starts no
    process and opens no socket; what only a build can know goes into the image's INSTALLED_LABEL instead."""
    key = fingerprint(
        base_dockerfile(base).read_bytes(),
        (REPO_ROOT / "base-images" / "scripts" / "check_torch.py").read_bytes(),
        locked_base_closure(),
        json.dumps({"matrix": base_matrix(base), "base": base, "os": os_image(offline)}, sort_keys=True),
    )
    return f"{base_repository(base)}:{base_version_tag()}-{key}"


def build_base(base: Base, *, offline: bool, force: bool = False) -> BuildRecord:
    """Build the torch base (cpu or cuda) unless an image with the same inputs fingerprint exists and installed
    what this build would install (its INSTALLED_LABEL)."""
    os_ref = ensure_os_base(offline)
    ref = base_ref(base, offline)
    source, req, variant = write_requirements(base)  # uv export, the wheelhouse, the CPU-index probe: build only
    args = base_build_args(base, os_ref, source, variant)
    installed = fingerprint(req.read_bytes(), json.dumps(args, sort_keys=True), image_id(os_ref))
    alias = f"{base_repository(base)}:{base_version_tag()}"
    if image_exists(ref) and image_labels(ref).get(INSTALLED_LABEL) == installed and not force:
        run(["docker", "tag", ref, alias], quiet=True)
        console.print(f"[green]base present[/green] {ref}")
        return BuildRecord(ref, f"base-{base}", 0.0, True, image_size(ref), [source])
    with serve_wheelhouse():
        seconds = docker_build(base_dockerfile(base), [ref, alias], args, labels={INSTALLED_LABEL: installed})
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
